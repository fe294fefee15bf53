# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench-assignment bench-search coverage install clean arm-board arm-board-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lcpaq quantize --model resnet-digits --bits w8a8 --compare w4a8 --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench-assignment: $(STAMP)
	$(PY) -m lcpaq.tools.bench_assignment --out docs

bench-search: $(STAMP)
	$(PY) -m lcpaq.tools.bench_search --out docs

coverage: $(STAMP)
	$(PY) -m lcpaq.tools.coverage_report --out docs

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The emulated AArch64 board (qemu-user, TVM RPC on 127.0.0.1) that the ARM backend's tests run on:
# built once into ~/.cache/lcpaq/arm-board ($$LCPAQ_ARM_BOARD_DIR), then started. ARM_BOARD_ARGS: e.g. --port 9100 --cpu max
arm-board: $(STAMP)
	$(PY) -m lcpaq.tools.arm_board setup && $(PY) -m lcpaq.tools.arm_board start $(ARM_BOARD_ARGS)

arm-board-stop: $(STAMP)
	$(PY) -m lcpaq.tools.arm_board stop

clean:
	rm -rf $(VENV) out .pytest_cache
