"""The long-lived objects a request or a worker pass needs, built once per app."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crm2calls.clock import Clock, utcnow
from crm2calls.config import Settings
from crm2calls.policy import DEFAULT_CAMPAIGN

if TYPE_CHECKING:
    from crm2calls.aimylogic import Dialer
    from crm2calls.sources.base import Source
    from crm2calls.store.base import LeadStore


@dataclass
class Services:
    """Settings, store, dialer and clock; the store and dialer are opened on first use."""

    settings: Settings
    clock: Clock = utcnow
    store_factory: Callable[[], LeadStore] | None = None
    dialer_factory: Callable[[], Dialer] | None = None
    notify: Callable[[], None] = lambda: None  # wakes the local delivery worker after a store write
    notify_follow_up: Callable[[], None] = lambda: None  # wakes the follow-up worker: work due at once (a stop)
    _store: LeadStore | None = field(default=None, repr=False)
    _dialers: dict[str, Dialer] = field(default_factory=dict, repr=False)
    _sources: dict[str, Source] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def store(self) -> LeadStore:
        """The lead store, opened (and migrated) on first use."""
        with self._lock:
            if self._store is None:
                if self.store_factory is not None:
                    store = self.store_factory()
                else:
                    from crm2calls.store import open_store

                    store = open_store(self.settings.leads_store)
                store.migrate()
                self._store = store
            return self._store

    @property
    def dialer(self) -> Dialer:
        """The default campaign's Aimylogic client, or the dry-run dialer in a dry run (ConfigError without a token)."""
        return self.dialer_for(DEFAULT_CAMPAIGN)

    def dialer_for(self, campaign: str) -> Dialer:
        """A campaign's Aimylogic client (dialer_factory, when given, serves every campaign)."""
        with self._lock:
            if campaign not in self._dialers:
                if self.dialer_factory is not None:
                    self._dialers[campaign] = self.dialer_factory()
                else:
                    from crm2calls.aimylogic import make_dialer

                    self._dialers[campaign] = make_dialer(self.settings, campaign)
            return self._dialers[campaign]

    def source(self, name: str) -> Source:
        """The adapter for a source name (UnknownSourceError when there is none)."""
        with self._lock:
            if name not in self._sources:
                from crm2calls.sources.base import load_source

                self._sources[name] = load_source(name, self.settings)
            return self._sources[name]
