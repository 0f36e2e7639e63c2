# Flotilla's make targets. `make run` starts everything in one process;
# `make test` is everything CI runs.

GO       ?= go
VERSION  ?= 0.1.0-dev
LDFLAGS  := -X main.version=$(VERSION)
DATA_DIR ?= ./.flotilla
PORT     ?= 7700
# go test flags; CI uses the defaults.
TESTFLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build run test test-go check-generated generate lint fmt clean bench bench-short cluster cluster-down test-ha

all: build

## build: compile every binary into bin/
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...
	$(GO) build -o bin/nats-server github.com/nats-io/nats-server/v2

## cluster: a three-host cluster on this machine behind HAProxy (root; docs/ha.md); `make cluster-down` stops it
cluster: build
	deployments/cluster/local-cluster up

cluster-down:
	deployments/cluster/local-cluster down

## test-ha: the cluster under load and faults (root; measured failover, docs/ha.md); FLOTILLA_HA_REPORT=file keeps the figures
test-ha:
	FLOTILLA_HA_TEST=1 $(GO) test -race -count=1 -timeout 25m -v -run TestFailoverUnderLoad ./deployments/cluster/hatest/

## run: build and start Flotilla on $(DATA_DIR) (embedded NATS + managed PostgreSQL)
run: build
	./bin/flotilla up --data-dir $(DATA_DIR) --port $(PORT)

## test: everything CI runs: generated code up to date, lint, all tests with -race
test: check-generated lint test-go

# The loadtest module (go.work ties it in) holds load drivers and their
# smoke tests against a real stack.
test-go:
	$(GO) test $(TESTFLAGS) ./... ./loadtest/...

## bench: measure a real flotilla up beside references (docs/benchmarks.md); JSON lines, BENCH_OUT=file keeps them
bench:
	scripts/bench.sh

## bench-short: the same, briefly and smaller (CI runs it so the benchmarks cannot rot)
bench-short:
	BENCH_SHORT=1 BENCH_IDLE_WAIT=2 scripts/bench.sh

## generate: regenerate protobuf, gRPC, gateway and OpenAPI code from api/proto
generate:
	scripts/generate.sh

## check-generated: fail if the committed generated code differs from a fresh generate
check-generated:
	scripts/check-generated.sh

## lint: gofmt, go.mod and go.sum tidy, go vet (both modules; also as for macOS, where developers build and test), staticcheck (pinned in tools/go.mod)
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^api/gen/')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@GOWORK=off $(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1; }
	@cd loadtest && GOWORK=off $(GO) mod tidy -diff || { echo "loadtest/go.mod or go.sum is not tidy: run (cd loadtest && GOWORK=off go mod tidy)"; exit 1; }
	$(GO) vet ./... ./loadtest/...
	GOOS=darwin GOARCH=arm64 $(GO) vet ./... ./loadtest/...
	GOWORK=off $(GO) tool -modfile=tools/go.mod staticcheck ./...

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '^api/gen/')

clean:
	rm -rf bin/
