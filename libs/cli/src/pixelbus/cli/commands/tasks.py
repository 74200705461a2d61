"""``pixelbus submit|status|watch|cancel|list|download``: tasks through the gateway's
HTTP API (``--url`` or ``PIXELBUS_URL``; ``--api-key`` or ``PIXELBUS_API_KEY``).

Human output by default, ``--json`` for scripts (one JSON document, or one per line for
``watch``). Exit status: 0 done, 1 the task failed or was cancelled, 2 bad input,
3 the gateway is unreachable or answered an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register"]

DEFAULT_URL = "http://127.0.0.1:8000"


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the gateway (PIXELBUS_URL, default {DEFAULT_URL})")
    common.add_argument("--api-key", help="an API key (PIXELBUS_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    submit = subparsers.add_parser("submit", help="create a task")
    kinds = submit.add_subparsers(dest="kind", metavar="KIND", required=True)
    swap = kinds.add_parser(
        "face-swap", parents=[common], help="swap a face into an image or a video"
    )
    swap.add_argument("--source", required=True, help="the face: a file or an http(s) URL")
    swap.add_argument(
        "--target", required=True, help="the image or video: a file or an http(s) URL"
    )
    swap.add_argument(
        "--output-format", help="png, jpeg, webp; for a video target mp4 (default) or webm"
    )
    swap.add_argument("--resolution", help="fit within WIDTHxHEIGHT")
    swap.add_argument("--model", help="builtin, inswapper_128, inswapper_128_fp16, remote")
    swap.add_argument("--webhook-url", help="POST the final state here (signed)")
    swap.add_argument("--wait", action="store_true", help="follow it to the end")
    swap.set_defaults(run=lambda args: _run(args, _submit_face_swap))
    comfy = kinds.add_parser("comfy", parents=[common], help="run a ComfyUI workflow")
    comfy.add_argument("workflow_file", type=Path, help="API-format graph (JSON file)")
    comfy.add_argument("--workflow", default="comfy", help="the workflow's name")
    comfy.add_argument("--webhook-url", help="POST the final state here (signed)")
    comfy.add_argument("--wait", action="store_true", help="follow it to the end")
    comfy.set_defaults(run=lambda args: _run(args, _submit_comfy))

    for name, help_text, action in (
        ("status", "a task's current state", _status),
        ("watch", "follow a task live, with a progress bar", _watch),
        ("cancel", "cancel a task", _cancel),
    ):
        parser = subparsers.add_parser(name, parents=[common], help=help_text)
        parser.add_argument("task_id")
        parser.set_defaults(run=lambda args, action=action: _run(args, action))
    listing = subparsers.add_parser("list", parents=[common], help="recent tasks")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--status", help="only tasks in this status")
    listing.set_defaults(run=lambda args: _run(args, _list))
    download = subparsers.add_parser("download", parents=[common], help="a task's outputs")
    download.add_argument("task_id")
    download.add_argument("-o", "--output-dir", type=Path, default=Path("."))
    download.set_defaults(run=lambda args: _run(args, _download))


def _run(args: argparse.Namespace, action: Callable[[Any, argparse.Namespace], int]) -> int:
    from pixelbus.client import ApiError, Client, PixelbusError, Unreachable

    url = args.url or os.environ.get("PIXELBUS_URL", DEFAULT_URL)
    key = args.api_key or os.environ.get("PIXELBUS_API_KEY") or None
    try:
        with Client(url, api_key=key) as client:
            return action(client, args)
    except ApiError as exc:
        return _fail(f"the gateway refused: {exc}", 2 if exc.status == 422 else 3)
    except Unreachable as exc:
        return _fail(f"{exc} (is the gateway running? set --url or PIXELBUS_URL)", 3)
    except PixelbusError as exc:
        return _fail(str(exc), 3)
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}", 2)


def _fail(message: str, status: int) -> int:
    print(f"pixelbus: {message}", file=sys.stderr)
    return status


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=None, sort_keys=True))


def _describe(task: Any) -> str:
    lines = [f"{task.task_id}  {task.status}  ({task.workflow})"]
    if task.queue_position:
        lines.append(f"  queue position: {task.queue_position}")
    if task.progress and not task.is_final:
        lines.append(f"  {_bar(task)}")
    if task.error:
        lines.append(f"  error: {task.error.get('code')}: {task.error.get('message')}")
    lines.extend(f"  output: {url}" for url in task.output_urls)
    return "\n".join(lines)


def _bar(task: Any, width: int = 30) -> str:
    """``[#####.....]  40%  PROCESSING  step``: the step is ``frames 100/250`` for a
    video task (it counts frames), else the progress message or node."""
    fraction = task.fraction
    frames = task.frames
    if fraction is None and frames is not None and frames[1] > 0:
        fraction = frames[0] / frames[1]
    if task.status == "COMPLETED":
        fraction = 1.0
    if fraction is None:
        return f"[{'.' * width}]   ?%  {task.status}"
    filled = round(max(0.0, min(1.0, fraction)) * width)
    if frames is not None:
        step = f"frames {frames[0]}/{frames[1]}"
    else:
        step = (task.progress or {}).get("message") or (task.progress or {}).get("node") or ""
    text = f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  {task.status}"
    return f"{text}  {step}".rstrip()


def _follow(client: Any, task_id: str, as_json: bool) -> int:
    tty = sys.stdout.isatty() and not as_json
    last = None
    shown = ""
    for task in client.events(task_id):
        last = task
        if as_json:
            _print_json(task.raw)
            continue
        line = _bar(task) if task.status != "PENDING" else _pending(task)
        if line == shown:
            continue
        shown = line
        if tty:
            print(f"\r\033[K{line}", end="", flush=True)
        else:
            print(line, flush=True)
    last = last or client.get(task_id)
    if tty:
        print()
    if not as_json:
        print(_describe(last))
    return 0 if last.status == "COMPLETED" else 1


def _pending(task: Any) -> str:
    if task.queue_position == 0:
        return "PENDING, handed to a worker"
    where = f", queue position {task.queue_position}" if task.queue_position else ""
    return f"PENDING{where}"


def _submit_face_swap(client: Any, args: argparse.Namespace) -> int:
    given = (
        ("resolution", args.resolution),
        ("model", args.model),
        ("output_format", args.output_format),
    )
    options = {k: v for k, v in given if v}
    task = client.face_swap(args.source, args.target, webhook_url=args.webhook_url, **options)
    return _submitted(client, task, args)


def _submit_comfy(client: Any, args: argparse.Namespace) -> int:
    try:
        graph = json.loads(args.workflow_file.read_text())
    except json.JSONDecodeError as exc:
        return _fail(f"{args.workflow_file} is not JSON: {exc}", 2)
    if not isinstance(graph, dict):
        return _fail(f"{args.workflow_file}: expected a JSON object (ComfyUI API format)", 2)
    task = client.comfy(graph, workflow=args.workflow, webhook_url=args.webhook_url)
    return _submitted(client, task, args)


def _submitted(client: Any, task: Any, args: argparse.Namespace) -> int:
    if args.json and not args.wait:
        _print_json(task.raw)
    elif not args.json:
        print(f"submitted {task.task_id}")
    return _follow(client, task.task_id, args.json) if args.wait else 0


def _status(client: Any, args: argparse.Namespace) -> int:
    task = client.get(args.task_id)
    if args.json:
        _print_json(task.raw)
    else:
        print(_describe(task))
    return 0


def _watch(client: Any, args: argparse.Namespace) -> int:
    return _follow(client, args.task_id, args.json)


def _cancel(client: Any, args: argparse.Namespace) -> int:
    task = client.cancel(args.task_id)
    if args.json:
        _print_json(task.raw)
    else:
        print(f"cancel requested: {task.task_id} is {task.status}")
    return 0


def _list(client: Any, args: argparse.Namespace) -> int:
    tasks, _ = client.list(limit=args.limit, status=args.status)
    if args.json:
        _print_json([t.raw for t in tasks])
        return 0
    if not tasks:
        print("no tasks")
    for task in tasks:
        print(f"{task.task_id}  {task.status:<10}  {task.workflow or '-':<12}  {task.created_at}")
    return 0


def _download(client: Any, args: argparse.Namespace) -> int:
    task = client.get(args.task_id)
    if task.status != "COMPLETED":
        return _fail(f"task {task.task_id} is {task.status}: nothing to download", 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for output in (task.result or {}).get("outputs", []):
        dest = args.output_dir / Path(output["filename"]).name
        client.download(output["url"], dest)
        saved.append(str(dest))
    if args.json:
        _print_json(saved)
    else:
        for path in saved:
            print(f"saved {path}")
    return 0
