"""The open-files limit (RLIMIT_NOFILE) against the pool size: raise it, or say why not.

Owns the one syscall pair (getrlimit/setrlimit); the arithmetic is `core.fdbudget`'s.
Called at start (`supd` refuses to start with the problem) and by the hub before a
`scale` or a reload grows the pool (refused, naming `ulimit -n`). Must not import other
spokes.
"""

from __future__ import annotations

import resource

from supervisord.core.fdbudget import fd_budget_problem, soft_limit_to_ask
from supervisord.logs import log


def ensure(children: int, spares: int) -> str | None:
    """Raise the soft limit for `children` and `spares` if it is too low and the hard limit
    allows; the problem (naming `ulimit -n`, the limit and the need) if it is still too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft_limit_to_ask(children + spares, soft, hard)
    if target is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log("nofile_raised", soft=target, was=soft, hard=hard, children=children)
            soft = target
        except (ValueError, OSError) as e:
            log("nofile_not_raised", soft=soft, hard=hard, error=str(e))
    return fd_budget_problem(children, soft, spares)
