"""Generate a sample video (FFmpeg's test pattern and a tone), for demos and benchmarks.

``python -m tools.make_sample out.mp4 --seconds 30`` (H.264/AAC, a keyframe
every 2 s).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from nodes.uploader.ffmpeg import find_ffmpeg

__all__ = ["main", "make_sample"]


def make_sample(out: Path, *, seconds: float, size: str = "1280x720", rate: int = 25,
                bitrate: str | None = None, preset: str = "veryfast",
                faststart: bool = True) -> Path:
    """An H.264/AAC test video; ``faststart``: its index first, as web video is
    published (an uploader can cut such a file while it arrives)."""
    video = ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", "-g", str(2 * rate)]
    if faststart:
        video += ["-movflags", "+faststart"]
    if bitrate:
        video += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    subprocess.run(
        [find_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=duration={seconds}:size={size}:rate={rate}", "-f", "lavfi", "-i",
         f"sine=frequency=440:duration={seconds}", *video, "-c:a", "aac", "-shortest", str(out)],
        check=True)
    return out


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seconds", default=30.0, show_default=True, type=click.FloatRange(1))
@click.option("--size", default="1280x720", show_default=True)
@click.option("--bitrate", default=None, help="e.g. 7600k (default: x264's choice)")
def main(out: Path, seconds: float, size: str, bitrate: str | None) -> None:
    """Write a sample video to OUT."""
    make_sample(out, seconds=seconds, size=size, bitrate=bitrate)
    click.echo(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
