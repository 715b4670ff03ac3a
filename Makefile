# The two commands a fresh machine needs: `make demo` and `make test`. Everything else here
# is what they stand on. The virtualenv lives in .venv; generated protobuf code in protos/.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GEN    := protos/custodes_pb2.py protos/custodes_pb2_grpc.py protos/custodes_pb2.pyi \
          protos/custodes_pb2_grpc.pyi

.PHONY: venv protos demo test lint typecheck pytest bench clean

venv: $(STAMP) $(GEN)

$(STAMP): pyproject.toml agent/_answer.c agent/_marktree.c protos/evidence/_native.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# Generated at build time from the one source of truth; never committed (README, "Protocol").
$(GEN) &: protos/custodes.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
	    --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=quiet:. \
	    --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:. \
	    protos/custodes.proto
protos: $(GEN)

demo: venv
	$(PY) docs/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check agent server protos policies

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Every figure the README quotes (root for the gate, the JIT loop and the peer comparison).
bench: venv
	$(PY) -m bench.policy_bench
	$(PY) -m bench.evidence_bench
	$(PY) -m bench.journal_bench
	$(PY) -m bench.store_bench
	$(PY) -m bench.ingest_bench --quick
	$(PY) -m bench.detect_bench
	$(PY) -m bench.detect_bench --e2e
	$(PY) -m bench.jit_bench
	$(PY) -m bench.console_bench
	$(PY) -m bench.gate_bench
	$(PY) -m bench.gate_bench --pin
	$(PY) -m bench.agent_idle
	bash bench/peer_gate.sh
	PIN=same bash bench/peer_gate.sh

clean:
	rm -rf $(VENV) $(GEN) .mypy_cache .ruff_cache .pytest_cache
