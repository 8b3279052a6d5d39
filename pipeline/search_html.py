"""A self-contained HTML page of search results, with a thumbnail strip of every clip.

Thumbnails are decoded from the source videos at the clip's timestamps (PyAV, the
same reader as the job) and embedded as JPEG data URIs, so the page is one file
that opens anywhere. A video that cannot be read shows why instead of its strip.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
from typing import Any

import numpy as np

from decoder import VideoError

THUMBS_PER_RESULT = 4
THUMB_SIZE = 96


def thumbnails(uri: str, start_sec: float, end_sec: float, count: int = THUMBS_PER_RESULT,
               decoder=None) -> list[np.ndarray]:
    """`count` frames spread over [start_sec, end_sec) of the video, centre-cropped, THUMB_SIZE square.

    Decoded in `decoder` (a decoder.process.DecoderProcess), or in one of its own.
    """
    from decoder import DecodeOptions
    from decoder.process import DecoderProcess
    from storage.paths import opener_for

    span = max(end_sec - start_sec, 1e-3)
    options = DecodeOptions(fps=count / span, frames_per_clip=count, size=THUMB_SIZE, max_seconds_per_video=60)
    with contextlib.nullcontext(decoder) if decoder is not None else DecoderProcess(slots=1) as process:
        reader = process.reader(uri, options, start_sec=start_sec or None, end_sec=end_sec, opener=opener_for(uri))
        for clip in reader:
            return list(clip.frames)
    return []


def _jpeg_data_uri(frame: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _strip(row: dict[str, Any], level: str, decoder) -> str:
    start, end = (row["start_sec"], row["end_sec"]) if level == "clip" else (0.0, row.get("duration_sec") or 1.0)
    try:
        frames = thumbnails(row["uri"], start, end, decoder=decoder)
    except (VideoError, OSError) as e:
        return f'<div class="missing">no thumbnails: {html.escape(str(e))}</div>'
    except Exception as e:  # noqa: BLE001 - a page of results must not fail on one unreadable video
        return f'<div class="missing">no thumbnails: {html.escape(type(e).__name__ + ": " + str(e))}</div>'
    if not frames:
        return '<div class="missing">no thumbnails: no frames in that range</div>'
    return "".join(f'<img class="thumb" alt="frame {i}" src="{_jpeg_data_uri(f)}">' for i, f in enumerate(frames))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>S3D search results</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
h2 {{ margin-top: 1.5em; border-bottom: 1px solid #ccc; }}
.result {{ display: flex; align-items: center; gap: 1em; margin: .5em 0; }}
.meta {{ width: 22em; font-size: 90%; overflow-wrap: anywhere; }}
.score {{ font-weight: bold; }}
.thumb {{ width: {size}px; height: {size}px; margin-right: 2px; }}
.missing {{ color: #a00; font-size: 85%; }}
.note {{ color: #666; font-size: 85%; }}
</style></head>
<body>
<h1>S3D MIL-NCE search</h1>
<p class="note">Model: {model}. Level: {level}. Score: dot product of text and video embeddings.</p>
{sections}
<p class="note" id="status">loading</p>
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img.thumb");
  var ok = 0;
  imgs.forEach(function (img) {{ if (img.complete && img.naturalWidth > 0) ok++; }});
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-rendered", ok);
  document.getElementById("status").textContent = ok + " of " + imgs.length + " thumbnails rendered";
}});
</script>
</body></html>
"""


def write_html(path: str, rows: list[dict[str, Any]], level: str, metadata: dict[str, Any]) -> None:
    from decoder.process import DecoderProcess

    with DecoderProcess(slots=1) as decoder:  # one process for the page's thumbnails, restarted if one crashes
        sections = _sections(rows, level, decoder)
    page = PAGE.format(size=THUMB_SIZE, model=html.escape(str(metadata.get("model"))), level=level,
                       sections="\n".join(sections))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def _sections(rows: list[dict[str, Any]], level: str, decoder) -> list[str]:
    sections: list[str] = []
    current = None
    for row in rows:
        if row["query_id"] != current:
            current = row["query_id"]
            sections.append(f"<h2>{html.escape(row['query'])}</h2>")
        where = (f"{row['start_sec']:.2f}s – {row['end_sec']:.2f}s" if level == "clip"
                 else f"{row.get('num_clips')} clips, {row.get('duration_sec') or 0:.1f}s")
        sections.append(
            '<div class="result"><div class="meta">'
            f'<span class="score">#{row["rank"]} · {row["score"]:.4f}</span><br>'
            f'{html.escape(row["uri"])}<br>{where}</div>{_strip(row, level, decoder)}</div>'
        )
    return sections
