# Two entry points, as in the README: `make run` (install everything, run the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

AGENTS_VENV ?= .venv-agents

.PHONY: run test install debian-packages agents-venv

run: install
	$(BIN)/lipstream serve

test: install debian-packages agents-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

install: $(VENV)/.installed

# Tests drive Debian's Chromium (never a browser download of Playwright's own), espeak-ng, and the
# engines we scale on: HAProxy, coturn and Janus. Installed here when this is a Debian machine and we may
# use apt; otherwise one line says what will be skipped.
DEBIAN_PACKAGES := chromium espeak-ng haproxy coturn janus
debian-packages:
	@if [ -x /usr/bin/chromium ] && (for c in espeak-ng haproxy turnserver janus; do command -v $$c > /dev/null || exit 1; done); then :; \
	elif command -v apt-get > /dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) > /dev/null; \
	else echo "tests that need them will be skipped: install Debian's $(DEBIAN_PACKAGES) (apt-get install)"; fi

# torch goes first, pinned, so that pip takes the CPU wheel; then the package and its test tools.
$(VENV)/.installed: pyproject.toml agents/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[export,test]' -e ./agents
	touch $@

# A voice agent's environment, apart: Pipecat and LiveKit Agents pin protobuf >= 5, the server's mediapipe
# < 5. The tests run a real Pipecat pipeline and LiveKit's avatar runner in it against a server in
# theirs (tests/test_agents.py).
agents-venv: $(AGENTS_VENV)/.installed
$(AGENTS_VENV)/.installed: agents/pyproject.toml
	$(PYTHON) -m venv $(AGENTS_VENV)
	$(AGENTS_VENV)/bin/python -m pip install --quiet -e './agents[pipecat,livekit]'
	touch $@
