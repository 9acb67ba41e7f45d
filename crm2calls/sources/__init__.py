"""CRM adapters, imported only when a request for them arrives (Lambda cold starts stay small).

This package's own module imports nothing: the mapping file's schema reads the names below.
"""

from __future__ import annotations

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

