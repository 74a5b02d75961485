"""``bnnkit devices``: the accelerators this process sees, and what ``--device auto`` would pick."""

from __future__ import annotations

import os
from typing import Any

import click

from bnnkit.cli._common import console, device_option, print_json

GIB = 2**30
#: Environment variables that change which device a process uses (torchrun sets the rank ones).
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "RANK", "WORLD_SIZE")


def _cuda_devices() -> list[dict[str, Any]]:
    """One entry per visible CUDA device; a device whose memory query fails is listed as busy."""
    import torch

    from bnnkit.engine.device import cuda_free_memory

    if not torch.cuda.is_available():
        return []
    memory = {index: (free, total) for index, free, total in cuda_free_memory()}
    out = []
    for index in range(torch.cuda.device_count()):
        try:
            name = torch.cuda.get_device_name(index)
        except (RuntimeError, AssertionError) as exc:
            name = f"? ({exc})"
        try:
            capability: list[int] | None = list(torch.cuda.get_device_capability(index))
        except (RuntimeError, AssertionError):
            capability = None
        free, total = memory.get(index, (None, None))
        out.append(
            {
                "index": index,
                "name": name,
                "free_bytes": free,
                "total_bytes": total,
                "compute_capability": capability,
                "available": index in memory,
            }
        )
    return out


def describe(requested: str = "auto") -> dict[str, Any]:
    """Everything ``bnnkit devices`` prints, as a JSON-serialisable dict."""
    import torch

    from bnnkit.engine.device import select_device
    from bnnkit.errors import UsageError

    try:
        mps = bool(torch.backends.mps.is_available())
    except (AttributeError, RuntimeError):
        mps = False
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "cuda_devices": _cuda_devices(),
        "mps_available": mps,
        "cpu": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "env": {var: os.environ[var] for var in ENV_VARS if var in os.environ},
        "requested": requested,
    }
    try:
        device, reason = select_device(requested)
        info["selected"] = {"device": str(device), "reason": reason}
    except UsageError as exc:
        info["selected"] = {"device": None, "reason": None, "error": exc.message}
    return info


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@device_option
def command(as_json: bool, device: str) -> None:
    """Show the CUDA GPUs (name, free and total memory), MPS and CPU this process sees,
    the environment that steers the choice (CUDA_VISIBLE_DEVICES, LOCAL_RANK under torchrun),
    and the device that train/evaluate/predict would use with the same --device.

    \b
    Examples:
      bnnkit devices
      CUDA_VISIBLE_DEVICES=1,2 bnnkit devices --json
      bnnkit devices --device cuda:1

    Exits with status 2 when the requested --device cannot be used here.
    """
    info = describe(device)
    failed = bool(info["selected"].get("error"))
    if as_json:
        print_json(info)
        if failed:
            raise SystemExit(2)
        return
    out = console()
    cuda = info["cuda_build"] or "none"
    out.print(f"torch {info['torch']} (CUDA build: {cuda})")
    visible = info["env"].get("CUDA_VISIBLE_DEVICES")
    out.print(f"CUDA_VISIBLE_DEVICES: {visible if visible is not None else '(not set)'}")
    if info["cuda_devices"]:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, title="CUDA devices", title_justify="left")
        for col in ("index", "name", "free GiB", "total GiB", "capability"):
            table.add_column(col, justify="left" if col == "name" else "right")
        for d in info["cuda_devices"]:
            cap = ".".join(map(str, d["compute_capability"])) if d["compute_capability"] else "-"
            free = _gib(d["free_bytes"]) if d["available"] else "busy"
            table.add_row(f"cuda:{d['index']}", d["name"], free, _gib(d["total_bytes"]), cap)
        out.print(table)
    else:
        out.print("CUDA devices: none available")
    out.print(f"MPS (Apple GPU): {'available' if info['mps_available'] else 'not available'}")
    cpu = info["cpu"]
    out.print(f"CPU: {cpu['cores']} cores, torch uses {cpu['torch_threads']} threads")
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        if var in info["env"]:
            out.print(f"{var}: {info['env'][var]}")
    sel = info["selected"]
    if failed:
        out.print(f"[bold red]error:[/] {sel['error']}")
        raise SystemExit(2)
    out.print(f"--device {info['requested']} -> [bold]{sel['reason']}[/]")
