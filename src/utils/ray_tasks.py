"""Ray tasks' results in the order the tasks finish, for the two Ray back ends (src.training.ray_runner,
src.app.categories). Ray is imported only when this runs: nothing else needs it (requirements-distributed.txt)."""
from tqdm import tqdm


def collect_as_completed(pending, handle, when_lost, desc, unit, show_pending=False):
    """Wait for the tasks of ``pending`` ({ObjectRef: name}) in the order they complete and call
    ``handle(name, result)`` for each; a truthy return stops the wait. A task whose worker was lost more often than
    retried has ``when_lost(name, cause)`` as its result, ``cause`` the last line of Ray's error (the task's own
    exception). A tqdm bar (``desc``, ``unit``) counts the finished tasks, with ``show_pending`` the first names
    still pending as its postfix. The tasks still pending at the end (after an early stop, an error or Ctrl-C) are
    cancelled."""
    import ray
    pending = dict(pending)
    bar = tqdm(total=len(pending), desc=desc, unit=unit)
    try:
        while pending:
            if show_pending:
                bar.set_postfix_str(", ".join(sorted(pending.values())[:4]) + (" ..." if len(pending) > 4 else ""))
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                result = when_lost(name, str(exc).strip().splitlines()[-1])
            stop = handle(name, result)
            bar.update(1)
            if stop:
                break
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        bar.close()
