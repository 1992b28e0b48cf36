"""The weekly report: CRM outcomes, attribution, metrics, checks, charts, the page, delivery."""
