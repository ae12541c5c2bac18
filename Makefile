# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv extension bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(BIN)/sam3d 3dfy examples/chair.png --mask examples/chair_mask.png \
	    --out out/demo.blend --glb out/demo.glb --render out/demo.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Per-platform extension zips with the runtime wheels downloaded now (never committed);
# GPU=1 bundles onnxruntime-gpu instead of onnxruntime.
extension: $(STAMP)
	$(BIN)/python -m sam3d_addon.build_extension --out dist $(if $(GPU),--gpu)

clean:
	rm -rf $(VENV) out dist
