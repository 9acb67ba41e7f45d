"""CRM adapters, imported only when a request for them arrives (Lambda cold starts stay small)."""

from __future__ import annotations

from importlib import import_module

from crm2calls.config import Settings
from crm2calls.errors import UnknownSourceError
from crm2calls.sources.base import Source

# name -> "module:Class"; a new CRM is one line here, one module, one fixture folder, one test module
SOURCES: dict[str, str] = {
    "generic": "crm2calls.sources.generic:GenericSource",
    "amocrm": "crm2calls.sources.amocrm:AmoCrmSource",
    "bitrix24": "crm2calls.sources.bitrix24:Bitrix24Source",
    "hubspot": "crm2calls.sources.hubspot:HubSpotSource",
    "pipedrive": "crm2calls.sources.pipedrive:PipedriveSource",
    "salesforce": "crm2calls.sources.salesforce:SalesforceSource",
    "close": "crm2calls.sources.close:CloseSource",
    "zoho": "crm2calls.sources.zoho:ZohoSource",
}


def load_source(name: str, settings: Settings) -> Source:
    """Build the adapter for `name`, or raise UnknownSourceError (404)."""
    target = SOURCES.get(name)
    if target is None:
        raise UnknownSourceError(f"no source named {name!r}; known: {', '.join(sorted(SOURCES))}", field="source")
    module_name, class_name = target.split(":")
    cls = getattr(import_module(module_name), class_name)
    return cls(settings, settings.policy.source(name))
