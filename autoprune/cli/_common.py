"""Flags and checks shared by several commands."""

from __future__ import annotations

import argparse


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="a .pt checkpoint or an Ultralytics model YAML (e.g. yolov8n.yaml); default: the embedded demo model",
    )


def add_device_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """`--device`, the same default (auto) and spellings in every command (`autoprune.devices.resolve_devices`)."""
    from autoprune.devices import DEVICE_HELP

    parser.add_argument("--device", default="auto", help=f"{what}{': ' if what else ''}{DEVICE_HELP}")


def add_imgsz_argument(parser: argparse.ArgumentParser, default: int = 640, what: str = "costs") -> None:
    parser.add_argument("--imgsz", type=int, default=default, help=f"image size for {what} (default {default})")


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"
