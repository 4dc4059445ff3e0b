"""Parameters that depend on the MS: AOFlagger's default strategy, chosen per telescope.

A DP3 built from source lets AOFlagger pick `<telescope>-default.lua` from the MS's
OBSERVATION::TELESCOPE_NAME; the dp3 wheel's AOFlagger finds no strategy at all, so the
workflow names, per MS, the file AOFlagger would have picked. The choice changes the flags,
so it is part of each MS's parameters fingerprint: a changed choice makes the MS pending.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from dp3batch.config.steps import Chain
from dp3batch.dp3.install import wheel_aoflagger_strategy
from dp3batch.dp3.parameters import DP3Parameters, parameters_fingerprint
from dp3batch.dp3.translation import aoflagger_steps_without_strategy, chain_parameters


@dataclass(frozen=True)
class MSParameters:
    """The result-defining parameters of one MS and their fingerprint."""

    telescope: str
    parameters: DP3Parameters
    fingerprint: str
    # AOFlagger step name → the strategy the workflow chose for this MS's telescope.
    aoflagger_strategies: dict[str, str]


class PerMSParameters:
    """The chain's parameters per telescope, computed once per telescope name."""

    def __init__(
        self,
        chain: Chain,
        extra_inputs_dir: str | None,
        executable: str,
        shared: DP3Parameters,
        file_keys: set[str],
    ):
        self.chain = chain
        self.extra_inputs_dir = extra_inputs_dir
        self.executable = executable
        self.shared = shared
        self.file_keys = file_keys
        # Only the wheel's DP3 needs to be told; any other DP3 chooses by itself.
        self.varies = aoflagger_steps_without_strategy(chain) and (
            wheel_aoflagger_strategy(executable) is not None
        )
        self._by_strategy: dict[str | None, MSParameters] = {}

    def for_telescope(self, telescope: str) -> MSParameters:
        strategy = wheel_aoflagger_strategy(self.executable, telescope) if self.varies else None
        if strategy not in self._by_strategy:
            parameters = (
                chain_parameters(self.chain, self.extra_inputs_dir, strategy)
                if strategy
                else self.shared
            )
            strategies = parameters.chosen_strategies()
            self._by_strategy[strategy] = MSParameters(
                telescope=telescope,
                parameters=parameters,
                fingerprint=parameters_fingerprint(_fingerprint_view(parameters), self.file_keys),
                aoflagger_strategies=strategies,
            )
        found = self._by_strategy[strategy]
        return MSParameters(
            telescope, found.parameters, found.fingerprint, found.aoflagger_strategies
        )


def _fingerprint_view(parameters: DP3Parameters) -> list[tuple[str, str]]:
    """The chosen strategies count by name (`lofar-default.lua`), not by where the wheel is
    installed: moving the environment changes nothing, another telescope's strategy does.
    (Their content belongs to the DP3 version, which is compared on its own.)"""
    chosen = parameters.chosen_strategies()
    steps = tuple(
        replace(step, added={**step.added, "strategy": _by_name(chosen[step.name])})
        if step.name in chosen
        else step
        for step in parameters.steps
    )
    return replace(parameters, steps=steps).pairs()


def _by_name(strategy: str) -> str:
    return f"AOFlagger default {Path(strategy).name}"
