"""Download MNIST-style IDX archives into a local cache, verified before they are kept."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from trainer.idx import check_md5, decompress
from vaegen.errors import VaegenError

# Public mirrors, tried in order when no URL is configured.
DEFAULT_URLS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
URL_ENV: dict[str, str] = {"mnist": "VAEGEN_MNIST_URL", "fashion-mnist": "VAEGEN_FASHION_MNIST_URL"}
TIMEOUT_S = 30.0
_CHUNK = 1 << 20


class DownloadError(VaegenError):
    """The network (or the cache folder) failed; the caller adds what the user should do."""


def default_cache_root() -> Path:
    """$VAEGEN_CACHE, else $XDG_CACHE_HOME/vaegen, else ~/.cache/vaegen."""
    env = os.environ.get("VAEGEN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vaegen"


def dataset_cache_dir(name: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """`cache_dir/<name>`; without `cache_dir`, `<cache root>/datasets/<name>`."""
    if cache_dir is None:
        return default_cache_root() / "datasets" / name
    return Path(cache_dir).expanduser() / name


def base_urls(name: str, download_url: str | None) -> tuple[str, ...]:
    if download_url:
        return (download_url,)
    env = os.environ.get(URL_ENV[name])
    return (env,) if env else DEFAULT_URLS[name]


def download_idx(name: str, stem: str, dest_dir: Path, urls: tuple[str, ...]) -> Path:
    """Fetch `<url>/<stem>.gz` into `dest_dir`, keep it only if its decompressed md5 is official.

    Raises DownloadError when no mirror answers, VaegenError ('corrupt') when one served bad bytes.
    """
    from vaegen.atomic import ensure_writable_dir

    try:
        ensure_writable_dir(dest_dir)
    except VaegenError as exc:
        raise DownloadError(str(exc)) from None
    final = dest_dir / f"{stem}.gz"
    failures: list[str] = []
    corrupt: VaegenError | None = None
    for base in urls:
        url = base.rstrip("/") + "/" + f"{stem}.gz"
        # A unique temp name beside the target: concurrent Ray workers may download the same file,
        # and os.replace of identical verified content is harmless.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.gz.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, f"download {name} {stem}.gz")
            check_md5(name, stem, decompress(tmp.read_bytes(), url), url)
            os.replace(tmp, final)
            return final
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url}: {_reason(exc)}")
        except VaegenError as exc:  # served, but not the official content
            corrupt = exc
        finally:
            tmp.unlink(missing_ok=True)
    if corrupt is not None:
        raise corrupt
    raise DownloadError("; ".join(failures))


def _fetch(url: str, out, description: str) -> None:  # noqa: ANN001 - a binary file object
    from vaegen.progress import progress

    req = urllib.request.Request(url, headers={"User-Agent": "vaegen"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        got = 0
        with progress(description, total) as bar:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.advance(len(chunk))
        if total is not None and got != total:
            raise http.client.IncompleteRead(b"", total - got)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
