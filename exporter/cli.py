"""`vaegen export RUN [--out PATH] [--fp16] [--optimize] [--int8]`: a thin layer over
export_decoder."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import handle_errors, single_command_app

app = single_command_app("Export a trained decoder to a verified ONNX model.")


@app.command()
@handle_errors
def export(
    run: Path = typer.Argument(..., help="The training run directory (RUN or RUN/model)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output .onnx file (default: RUN/export/decoder.onnx)."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="Compute in float16 inside the graph (GPU workers); I/O dtypes stay."
    ),
    optimize: bool = typer.Option(
        False, "--optimize", help="Also save an onnxruntime CPU-optimized copy, *.opt.onnx."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Also save an int8 copy, *.int8.onnx, checked for quality (judge)."
    ),
    judge: Path | None = typer.Option(
        None,
        "--judge",
        help="--int8: a JUDGE folder (`vaegen judge`) to score it (default: cached).",
    ),
    int8_max_fidelity_drop: float = typer.Option(
        0.005, "--int8-max-fidelity-drop", help="--int8: largest label-fidelity drop allowed."
    ),
    int8_max_fid_ratio: float = typer.Option(
        1.1, "--int8-max-fid-ratio", help="--int8: largest FID(int8) / FID(fp32) allowed."
    ),
    int8_samples: int = typer.Option(
        10_000, "--int8-samples", help="--int8: samples decoded by both files for the check."
    ),
) -> None:
    """Export RUN's decoder to ONNX, (z, y) -> (uint8 image, float mean), checked against torch."""
    from exporter.export import default_output, export_decoder
    from exporter.int8 import int8_options
    from trainer.checkpoint import model_dir_of
    from vaegen.dirlock import hold_directory

    quant = int8_options(int8, judge, int8_max_fidelity_drop, int8_max_fid_ratio, int8_samples)
    target = out if out is not None else default_output(model_dir_of(run))
    with hold_directory(target.parent, "vaegen export"):  # one writer per export folder
        result = export_decoder(run, out=out, fp16=fp16, optimize=optimize, int8=quant)
    meta = result.metadata
    print(
        f"exported {result.path} ({result.precision}, opset {result.opset}, "
        f"{result.size_bytes / 1024:.1f} KiB, {result.seconds:.1f}s): "
        f"{meta['model']} {meta['arch']} latent {meta['latent_dim']}, "
        f"{meta['num_classes']} classes, image {meta['image_shape']}, {meta['likelihood']}"
    )
    for report in result.parity:
        print(report.summary())
    if result.optimized_path is not None:
        print(f"optimized copy (onnxruntime CPU) {result.optimized_path}")
    if result.int8 is not None:
        print(result.int8.describe())
