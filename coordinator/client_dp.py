"""Client-level differential privacy at the coordinator (a federation-policy choice).

Each node clips its update to ``clipping_norm`` (Flower's ``fixedclipping_mod``)
and counts as one institution, whatever its size; Flower's
``DifferentialPrivacyClientSideFixedClipping`` adds Gaussian noise of standard
deviation ``noise_multiplier * clipping_norm / n`` to every aggregate. ``n`` is
the run's minimum number of institutions, so a round with more of them is
over- rather than under-noised, and a node that refuses does not void the
round. The epsilon is that of the Gaussian mechanism composed over the rounds
(Opacus's RDP accountant, every institution in every round).
"""

from __future__ import annotations

from flwr.common import FitRes, Parameters, Scalar
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from opacus.accountants import RDPAccountant

from policies.documents import ClientLevelDP


class ClientLevelDPStrategy(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper, calibrated to the fewest institutions a round may have."""

    def __init__(self, strategy: Strategy, dp: ClientLevelDP, min_institutions: int) -> None:
        super().__init__(
            strategy,
            noise_multiplier=dp.noise_multiplier,
            clipping_norm=dp.clipping_norm,
            num_sampled_clients=min_institutions,
        )

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # refusals are recorded by the caller; the noise already covers the smallest round
        return super().aggregate_fit(server_round, results, [])


def client_level_epsilon(dp: ClientLevelDP, rounds: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, 1.0, rounds)]
    return float(accountant.get_epsilon(delta))
