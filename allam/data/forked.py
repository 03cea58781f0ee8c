"""Work in forked processes that report back, `at_once` at a time, where a process that dies
(the out-of-memory killer) is a result, never a wait: what the data engine's local tasks and its
merges run on (a pool such as multiprocessing's or datatrove's replaces a dead worker and waits
forever for its task's result)."""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Hashable, Optional


def died(code: Optional[int]) -> str:
    """How a process that sent no result ended ("was killed by SIGKILL (out of memory?)")."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"was killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"ended with exit code {code} and no result"


def run(keys: list[Hashable], at_once: int, target: Callable[[Hashable, int, Any], None],
        on_death: Callable[[Hashable, Optional[int], int], Any], *, stop: Callable[[Any], bool] = lambda r: False,
        fork_lock: Optional[threading.Lock] = None) -> dict:
    """Runs ``target(key, slot, writer)`` for each key in its own forked process (it inherits the
    parent's state: nothing is pickled but its result), at most `at_once` at a time; `slot` is
    which of the `at_once` places it holds, and it sends its result through ``writer.send``.
    A process that ends without one gives ``on_death(key, exitcode, pid)`` instead. Once a
    result makes ``stop(result)`` true, no further key starts. Returns {key: result} of the keys
    that ran. Stopping (Ctrl+C, an exception) terminates the running processes, then kills any
    that have not ended within 60 s, and re-raises. `fork_lock` is held around each fork."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("fork")
    todo, running, free, results, stopped = list(keys), {}, list(range(at_once)), {}, False
    try:
        while running or (todo and not stopped):
            while todo and free and not stopped:
                key, slot = todo.pop(0), free.pop(0)
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=target, args=(key, slot, writer), name=f"forked-{key}")
                running[key] = (proc, reader, slot)  # before start: a Ctrl+C in between still stops it
                if fork_lock is not None:
                    with fork_lock:
                        proc.start()
                else:
                    proc.start()
                writer.close()
            ready = wait([r for _, r, _ in running.values()] + [p.sentinel for p, _, _ in running.values()])
            for key, (proc, reader, slot) in list(running.items()):
                if reader not in ready and proc.sentinel not in ready:
                    continue
                try:
                    results[key] = reader.recv()
                except EOFError:  # ended without a result
                    proc.join()
                    results[key] = on_death(key, proc.exitcode, proc.pid)
                proc.join()
                reader.close()
                del running[key]
                free.append(slot)
                stopped = stopped or stop(results[key])
    except BaseException:
        started = [proc for proc, _, _ in running.values() if proc.pid is not None]
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.join(60)
            if proc.is_alive():  # its cleanup hangs: it must not publish once the parent gives up
                proc.kill()
                proc.join()
        raise
    return results
