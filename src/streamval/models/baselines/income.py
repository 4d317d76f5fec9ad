"""The income approach (DCF): projected cash flows discounted at a stated rate."""

from __future__ import annotations

from streamval.models.baselines.base import EventByEvent
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.credit import annuity_factor


class IncomeMethod(EventByEvent):
    """The income approach (DCF) from an asset's own attributes and features; nothing is fitted.

    Assumptions (stated, the same for every asset, none read from the generator's hidden
    parameters):

        monthly cash flow   income / 12 * `debt_service_share` * expected collection rate
        collection rate     exponentially weighted mean of the asset's `collection_feature`
                            (repayment ratio, paid / due) with weight `memory` on the newest
        growth              none (flat projection)
        horizon             `horizon_months` monthly cash flows (36: the label's 3 years)
        discount rate       `annual_rate` a year (8 %: policy rate about 5 % plus a funding and
                            risk spread), monthly (1 + r)^(1/12) - 1

    value = cash flow * annuity_factor(annual_rate, horizon_months). An asset without the income
    attribute gets the median of the values seen (warming).

    >>> dcf = IncomeMethod(annual_rate=0.0, horizon_months=36, debt_service_share=0.5)
    >>> e = AssetEvent("a", 1, None, {"repayment_ratio": 1.0}, {"income": 24_000.0})
    >>> dcf.process([e]).valuations[0].valuation  # 1,000 a month for 36 months, undiscounted
    36000.0
    """

    name = "income (DCF)"

    def __init__(
        self,
        *,
        annual_rate: float = 0.08,
        horizon_months: int = 36,
        debt_service_share: float = 0.30,
        income_attribute: str = "income",
        collection_feature: str = "repayment_ratio",
        memory: float = 0.3,
    ) -> None:
        super().__init__()
        self.annual_rate = annual_rate
        self.horizon_months = horizon_months
        self.debt_service_share = debt_service_share
        self.income_attribute = income_attribute
        self.collection_feature = collection_feature
        self.memory = memory
        self._factor = annuity_factor(annual_rate, horizon_months)
        self._collection: dict[str, float] = {}

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        income = event.attributes.get(self.income_attribute)
        if not isinstance(income, int | float):
            return self._fallback(), 0, True
        rate = self._collection.get(event.asset_id, 1.0)
        observed = event.features.get(self.collection_feature)
        if observed is not None:  # the feature is known at valuation time (not the value)
            rate = (
                observed
                if event.asset_id not in self._collection
                else ((1 - self.memory) * rate + self.memory * observed)
            )
            self._collection[event.asset_id] = rate
        cash_flow = float(income) / 12.0 * self.debt_service_share * rate
        return cash_flow * self._factor, 0, False
