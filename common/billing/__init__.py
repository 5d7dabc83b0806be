"""What a campaign costs: prices (the Azure Retail Prices API, cached), node-hours metered
from what the pool reports, and the budget. Pure figures here; the workflow's metering
(common/workflow/metering.py) ties them to a running job."""
