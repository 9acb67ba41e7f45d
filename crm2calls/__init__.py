"""crm2calls: CRM lead webhooks in, Aimylogic outbound calls out."""
