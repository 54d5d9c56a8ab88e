"""The numba backend's measured choices: serial or parallel kernel, count-domain or event path.

Both are made where the code runs, from timings of real calls, because the best answer depends on
the machine (cores, load, cache sizes) and the problem (shape, firing). Neither changes a number:
every choice gives the same outputs bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class ParallelChooser:
    """Serial or parallel, per problem shape, by measured time (``PARALLEL = "auto"``).

    Why: the parallel kernel's OpenMP workers (and torch's, in their own runtime) spin when idle;
    when the machine has more busy threads than cores a parallel call can wait for scheduler slices
    (measured on 2 shared cores: median 32 ms against 1.6 ms serial), while on an idle machine it
    is about twice as fast as the serial one. Timing both settles it where the code runs.
    """

    SAMPLES = 3  # timings kept per mode (after a first, untimed call each); the median decides
    FIRST_RETRY, LAST_RETRY = 8, 1024  # calls before the modes are timed again (doubling)

    def __init__(self) -> None:
        self.state: dict = {}

    def pick(self, key) -> tuple[bool, bool]:
        """``(parallel, timed)``: the mode of this call and whether to :meth:`record` its time.

        Each mode is timed ``SAMPLES`` times first; then the faster runs untimed, and at growing
        intervals both are timed once more (the other mode, then the faster), so that a change
        of machine load is followed without timing every call.
        """
        state = self.state.get(key)
        if state is None:
            state = self.state[key] = {
                "times": {False: [], True: []}, "warm": set(), "wait": 0, "gap": 0,
                "best": None, "recheck": False,
            }  # fmt: skip
        best = state["best"]
        if best is None:
            for mode in (True, False):
                if len(state["times"][mode]) < self.SAMPLES:
                    return mode, True
            best = state["best"] = self._best(state["times"])
        if state["recheck"]:
            state["recheck"] = False
            return best, True
        state["wait"] -= 1
        if state["wait"] <= 0:  # time the other mode again, then wait twice as long
            state["gap"] = min(self.LAST_RETRY, max(self.FIRST_RETRY, 2 * state["gap"]))
            state["wait"] = state["gap"]
            state["recheck"] = True
            return not best, True
        return best, False

    def record(self, key, parallel: bool, seconds: float) -> None:
        """The time of a call :meth:`pick` asked to time."""
        state = self.state[key]
        if parallel not in state["warm"]:  # a mode's first call pays one-time costs: not kept
            state["warm"].add(parallel)
            return
        samples = state["times"][parallel]
        samples.append(seconds)
        del samples[: -self.SAMPLES]
        if state["best"] is not None and self._best(state["times"]) != state["best"]:
            state["best"] = not state["best"]
            state["gap"] = 0  # the other mode won: back to frequent checks
            state["wait"] = min(state["wait"], self.FIRST_RETRY)

    @staticmethod
    def _best(times) -> bool:
        # a few samples: sorting in Python costs far less than np.median's overhead per call
        parallel, serial = sorted(times[True]), sorted(times[False])
        return parallel[len(parallel) // 2] < serial[len(serial) // 2]

    def choices(self) -> dict:
        """``{problem key: "parallel" | "serial"}`` as decided so far (for benchmarks)."""
        return {
            key: ("parallel" if state["best"] else "serial")
            for key, state in self.state.items()
            if state["best"] is not None
        }


class PathChooser:
    """Count-domain or event-driven path, per row, from the row's measured sparsity.

    The count-domain kernel costs about ``a_c`` per active channel, the event kernel about
    ``a_e`` per spike event; a row of ``A`` active channels and ``E`` events takes the count path
    when ``E > r * A``, with the crossover ``r = a_c / a_e`` measured once per problem shape on
    its first call: both paths time the same synthetic rows in which every active channel fires
    exactly one spike (``E = A``, the event kernel's best case), ``ROWS`` rows so that per-call
    overhead does not decide, best of ``REPEATS``; ``r`` is the ratio of the two times. Every
    count fires at least one spike per active channel (``E >= A``), so ``r < 1`` means the count
    path for every row.
    """

    ROWS, REPEATS = 8, 3

    def __init__(self) -> None:
        self.ratios: dict = {}

    def crossover(self, key, measure: Callable[[float], float]) -> float:
        """``r`` of the shape ``key``; ``measure(crossover)`` times one call of the synthetic rows
        with a forced path (``-inf``: counts, ``inf``: events) and returns seconds."""
        ratio = self.ratios.get(key)
        if ratio is None:
            best = {}
            for forced in (-math.inf, math.inf):
                measure(forced)  # first call: one-time costs
                best[forced] = min(measure(forced) for _ in range(self.REPEATS))
            ratio = self.ratios[key] = best[-math.inf] / best[math.inf]
        return ratio

    def choices(self) -> dict:
        """``{problem key: crossover r}`` measured so far (count path when events > r x active)."""
        return dict(self.ratios)
