"""The http section: the end-to-end job on the same videos read from disk and from an HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable

from benchmarks.common import BENCH_CACHE, e2e_corpus, run_json


def http_section(model: str, log: Callable[[str], None]) -> str:
    """The end-to-end job on the same videos read from disk and from an HTTP server on 127.0.0.1, alternated."""
    from synthetic.http_server import VideoServer

    _, corpus = e2e_corpus()
    server = VideoServer(corpus)
    manifest = os.path.join(BENCH_CACHE, "http_manifest.txt")
    names = sorted(n for n in os.listdir(corpus) if n.endswith(".avi"))
    with open(manifest, "w") as f:
        f.write("".join(server.url(n) + "\n" for n in names))
    inputs = {"disk": os.path.join(corpus, "*.avi"), "http": manifest}
    runs: dict[str, list[dict]] = {"disk": [], "http": []}
    served = []
    try:
        for round_ in range(2):
            for name, spec in (inputs.items() if round_ % 2 == 0 else reversed(inputs.items())):
                log(f"http: round {round_ + 1}, {name}")
                before = (sum(server.state.requests.values()), len(server.state.ranges))
                runs[name].append(run_json(["benchmarks.pipeline_throughput", "--model", model, "--input", spec,
                                            "--output_prefix", os.path.join(BENCH_CACHE, f"out_{name}")]))
                if name == "http":
                    served.append(sum(server.state.requests.values()) - before[0])
    finally:
        server.stop()
    size = sum(os.path.getsize(os.path.join(corpus, n)) for n in names)
    lines = [
        "## Reading from the web (the extraction job on 6 x 30 s 480p mpeg4 AVI, from disk and from an HTTP "
        "server on 127.0.0.1, alternated)",
        "",
        f"The same six files ({size / 2**20:.1f} MiB in all), listed in a manifest of http:// URLs served with Range "
        "support by `synthetic/http_server.py`, against the same files matched on disk. The decoder opens each "
        "file twice (the split step reads its header, then decoding), and each open reads the first 1 MiB "
        "and the AVI index at the end.",
        "",
        "| input | round | clips | wall s | clips/s after load | requests to the server |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("disk", "http"):
        for i, r in enumerate(runs[name]):
            lines.append(f"| {name} | {i + 1} | {r['clips']} | {r['wall_seconds']:.1f} | "
                         f"{r['clips_per_s_after_load']:.2f} | {served[i] if name == 'http' else '-'} |")
    mean = {name: sum(r["clips_per_s_after_load"] for r in rs) / len(rs) for name, rs in runs.items()}
    lines += ["", f"http / disk, mean of the rounds: **{mean['http'] / mean['disk']:.3f}** "
              f"(clips/s after the model load, {mean['http']:.2f} against {mean['disk']:.2f})."]
    return "\n".join(lines)
