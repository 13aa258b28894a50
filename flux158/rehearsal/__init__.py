"""The dress rehearsal's measuring and planning: what each stage costs (`meter`) and what the paper run will
(`plan`)."""

from flux158.rehearsal.meter import Usage, measure
from flux158.rehearsal.plan import Estimate, Measured, block_state_bytes, blockwise_plan, linear_plan

__all__ = ["Estimate", "Measured", "Usage", "block_state_bytes", "blockwise_plan", "linear_plan", "measure"]
