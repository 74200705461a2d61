# pixelbus task runner. Run through ./dev (it sets up .venv, just and nats-server first).
set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

# list the recipes
default:
    @just --list

# the whole stack on embedded defaults: own nats-server, gateway, projector, webhooks, worker, uploader
up *args:
    python tools/devstack.py "$@"

# the whole test suite: the lint (ruff, format check, strict mypy, import layers), then pytest
test *args:
    just lint
    python -m pytest -q "$@"

# only the fast, pure unit tests
unit *args:
    python -m pytest -q -m "not servers" libs services "$@"

# lint: ruff (style + bugs), the format check, mypy (strict on every lib and service) and
# the import layers of .importlinter (contracts pure, no lib or service imports a service, ...)
lint:
    ruff check .
    ruff format --check .
    mypy libs/*/src services/*/src
    lint-imports

# format the code
fmt:
    ruff format .
    ruff check --fix .

# pixelbus vs Celery+Redis vs arq vs bare JetStream: saturated tasks/s, one-in-flight and fixed-rate latency, NATS requests per task
bench *args:
    python -m tests.bench "$@"

# reads at 2,000 and at 200,000 tasks: GET final/pending, a list page, 1,000 idle SSE followers (requests/s, CPU, RSS)
bench-reads *args:
    python -m tests.bench_reads "$@"

# per-face time of the face-swap pipelines (built-in vs inswapper) next to the models alone
bench-faceswap *args:
    python -m tests.bench_faceswap "$@"

# one video's face swap on 1 and 2 workers (frames/s, speed-up) beside a single-process loop of the same engine: the platform's added time
bench-video *args:
    python -m tests.bench_video "$@"

# a video face swap through ./dev up itself (10 s 720p, one face): progress, the result checked against the input, played to its end in Chromium
check-up-video *args:
    python -m tests.devstack_video "$@"

# the platform's added time per ComfyUI task vs. the same graph sent straight to a (fake) ComfyUI
bench-comfy *args:
    python -m tests.bench_comfy "$@"

# the real stack under load while a random process is kill -9ed every 1-2 s: what was lost, doubled, how slow (--duration, --rate, --kill-every, ...)
chaos *args:
    python -m tests.chaos "$@"

# the stack at a steady rate for 30 minutes, sampling RSS, descriptors, NATS consumers and KV sizes each minute; prints the slopes (--duration, --rate, ...)
soak *args:
    python -m tests.soak "$@"

# rebuild the task-state KV bucket from the event stream (the projector's command)
rebuild *args:
    python -m pixelbus.projector.rebuild "$@"

# every service image (deploy/images/Dockerfile) built here with buildah on a debootstrapped Debian base; prints sizes (TARGET... to pick)
images *args:
    python -m tools.images "$@"

# re-pin every dependency into constraints.txt (names and versions only); for Python 3.11.2
# too, Debian bookworm's, which the images run on
lock:
    printf 'rust-just\n' > .venv/extra.in
    uv pip compile pyproject.toml .venv/extra.in --group dev --python-version 3.11.2 --no-header --no-annotate -q | grep -v '^-e ' > constraints.txt
