"""Small helpers shared by the package: seeding, rank-zero helpers, collection mapping, collectives, random state
(``rng_state``: the one capture/restore helper), exact dataloader resume, hook calls."""

from fabric_lite.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from fabric_lite.utilities.seed import seed_everything

__all__ = ["rank_zero_info", "rank_zero_only", "rank_zero_warn", "seed_everything"]
