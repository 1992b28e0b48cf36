"""CRM targets: what the pipeline writes into HubSpot or Salesforce, and what it reads back."""
