"""Account firmographics: from the CRM, a file or a company-lookup API, cached in the lake."""
