"""What sharing one clustering between processes costs, per step, in one process.

    python -m benchmarks.shared_clustering [--assets-per-group 7000]

Two engines (an owner and a follower) see the same three-group stream (3 events per asset);
the owner fits, its clustering goes through JSON to the follower, which adopts it; the follower's
asset profiles go through JSON (as on the profiles topic) into a third engine's fit. Prints the
wall time of each step, the message sizes, and the share of assets the follower places in the
owner's cluster. Wall times on this machine's shared cores: compare them with each other (the
fit against the adoption), not with another machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.models.shared import AssetProfile, SharedClustering
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets-per-group", type=int, default=7000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    panel = grouped_panel(
        THREE_GROUPS, args.assets_per_group, 3, seed=0, t0_ms=1_600_000_000_000, attributes=True
    )
    settings = EngineSettings(
        hidden=[8],
        seq_len=2,
        min_history=3,
        bootstrap_assets=10**9,  # fits only when asked
        training="sync",
        fit_max_assets=2000,
    )
    owner, follower = Engine(settings), Engine(settings)
    follower.fits_clustering = False
    for i in range(0, len(panel.events), 5000):
        owner.process(panel.events[i : i + 5000])
        follower.process(panel.events[i : i + 5000])

    def timed(label: str, step: object) -> object:
        t0 = time.perf_counter()
        out = step() if callable(step) else step
        print(f"{label:<45} {time.perf_counter() - t0:8.3f} s")
        return out

    print(f"assets per engine: {len(owner.assignments())}")
    timed("owner fit (fit_max_assets 2000)", owner.refit)
    shared = owner.export_clustering(version=1, owner="owner")
    assert shared is not None
    message = shared.to_json()
    print(f"clustering message: {len(message)} bytes")
    timed(
        "follower: parse + adopt the clustering",
        lambda: follower.adopt_clustering(SharedClustering.from_json(message)),
    )
    counts = timed("follower: ready_counts (every interval)", follower.ready_counts)
    assert isinstance(counts, dict)
    profiles = timed(
        "follower: asset_profiles (all due at once)", lambda: follower.asset_profiles(counts, "f")
    )
    assert isinstance(profiles, list)
    raw = timed("follower: profiles to JSON", lambda: [p.to_json() for p in profiles])
    assert isinstance(raw, list)
    print(f"profile message: {sum(map(len, raw)) // len(raw)} bytes on average")
    back = timed("reader: profiles from JSON", lambda: [AssetProfile.from_json(r) for r in raw])
    assert isinstance(back, list)
    third = Engine(settings)
    third.process(panel.events[:3000])
    third.profile_source = lambda: back
    timed(f"fit with {len(back)} external profiles", third.refit)
    a, b = follower.assignments(), owner.assignments()
    print(f"follower assets in the owner's cluster: {sum(a[k] == b[k] for k in a) / len(a):.3f}")


if __name__ == "__main__":
    main()
