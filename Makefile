# chainlb: Mininet testbed for chain-replicated LB flow tables.  `make help` lists the targets.
PY      := .venv/bin/python
NAME    ?= scale-out
MODE    ?= chain
CLI     ?=
RUNS    ?=
OUT     ?= results/compare
CT_TIMEOUTS ?=
CLI_ARG := $(if $(filter 1 yes true,$(CLI)),--cli,)
CT_ARG  := $(if $(CT_TIMEOUTS),--ct-timeouts $(CT_TIMEOUTS),)
# sizes (scenarios.params): LBS NFS L CLIENTS SERVERS SPARE_LBS SPARE_NFS FLOWS RATE CPS
# the chain protocol's VARIANT (steered | patent) and the LB nodes' FASTPATH (xdp | off)
SIZES   := lbs=$(LBS) nfs=$(NFS) l=$(L) clients=$(CLIENTS) servers=$(SERVERS) \
           spare_lbs=$(SPARE_LBS) spare_nfs=$(SPARE_NFS) flows=$(FLOWS) rate=$(RATE) cps=$(CPS) \
           variant=$(VARIANT) fastpath=$(FASTPATH)
SET_ARG := $(foreach kv,$(SIZES),$(if $(word 2,$(subst =, ,$(kv))),--set $(kv),))
SEEDS_ARG := $(if $(SEEDS),--seeds $(SEEDS),)

.PHONY: help setup test scenario sweep cli matrix compare bench bench-engine clean venv-check

help:
	@echo "Targets (most need root: prefix with sudo):"
	@echo "  sudo make setup                      install Debian packages, start OVS, build .venv (idempotent)"
	@echo "  sudo make test                       setup, then run the test suite (pytest)"
	@echo "  sudo make scenario NAME=scale-out MODE=chain [CLI=1]"
	@echo "                                       run one scenario (MODE: chain|maglev|local|hash; NAME=all for every one)"
	@echo "      sizes: LBS=6 NFS=4 L=2 CLIENTS=4 SERVERS=3 SPARE_LBS= SPARE_NFS= FLOWS=60 RATE=1 (Mbit/s) CPS=300 (arrivals)"
	@echo "      VARIANT=patent runs the patent's chain protocol (default steered; see README)"
	@echo "      FASTPATH=off forwards every packet through the LB agents (default xdp: in the kernel)"
	@echo "      repetitions: SEEDS=1-5 (or 1,2,5) MODE=chain,maglev (or all): one run each"
	@echo "      FILE=my.toml runs a scenario file instead of NAME (format: scenarios/files.py)"
	@echo "      SCALE=0.5 halves every time and duration"
	@echo "  sudo make cli                        open the interactive testbed CLI"
	@echo "      (scenario, cli: CT_TIMEOUTS=tcp_established=600,udp=20 sets the NFs' conntrack"
	@echo "       timeouts, and the LB nodes' connection tracking with them)"
	@echo "  sudo make sweep NAME=scale-out PARAM=L VALUES=1,2,3 MODE=chain,maglev SEEDS=1-3"
	@echo "                                       the grid of runs, each metric against the parameter"
	@echo "  sudo make matrix [SCALE=0.5]         run every scenario in every mode and compare"
	@echo "  make compare RUNS=\"DIR ...\" OUT=DIR  compare result folders (table + plots)"
	@echo "  sudo make bench                      testbed benchmarks"
	@echo "  make bench-engine                    benchmark the chain engine alone (no root)"
	@echo "  sudo make clean                      remove leftovers of a crashed run (own bridges, links, PIDs)"

setup:
	@scripts/setup.sh

venv-check:
	@test -x $(PY) || { echo "error: $(PY) missing: run it with sudo: sudo make setup" >&2; exit 1; }

test: setup
	$(PY) -m pytest -q

scenario: setup
	$(PY) -m scenarios run $(if $(FILE),--file $(FILE),$(NAME)) --mode $(MODE) $(SEEDS_ARG) $(SET_ARG) $(if $(SCALE),--time-scale $(SCALE),) $(CLI_ARG) $(CT_ARG)

cli: setup
	$(PY) -m scenarios cli --mode $(MODE) $(SET_ARG) $(CT_ARG)

sweep: setup
	$(PY) -m scenarios sweep $(if $(FILE),--file $(FILE),$(NAME)) --param $(PARAM) --values $(VALUES) --mode $(MODE) $(if $(SEEDS),--seeds $(SEEDS),) $(SET_ARG) $(if $(SCALE),--time-scale $(SCALE),) $(CT_ARG)

matrix: setup
	$(PY) -m scenarios matrix $(if $(SCALE),--time-scale $(SCALE),) $(SET_ARG)

compare: venv-check
	$(PY) -m scenarios compare $(RUNS) --out $(OUT)

bench: setup
	$(PY) -m bench

bench-engine: venv-check
	$(PY) -m bench.engine

clean: venv-check
	$(PY) -m scenarios cleanup
