# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench-assignment bench-search coverage install clean

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

clean:
	rm -rf $(VENV) out .pytest_cache
