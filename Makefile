# The few commands a newcomer needs; `make` alone lists them.
.PHONY: help local test chart-test ci bench bench-kinesis generate crd docs fmt lint

help:
	@echo "make local     run the whole pipeline locally (taxi-worker local, release build)"
	@echo "make test      run every test, starting the services they need (bash .ci/test)"
	@echo "make chart-test  only the Helm chart's and the Dockerfile's tests (bash .ci/chart-test)"
	@echo "make ci        what CI runs: fmt check, clippy, tests (bash .ci/run)"
	@echo "make bench     criterion hot path, and S3/OpenSearch I/O when the services run"
	@echo "make bench-kinesis  replay/run rates and the reference architecture's scenario against kinesis-mock"
	@echo "make generate  write sample trips to trips.jsonl"
	@echo "make crd       regenerate crds/taxipipelines.yaml (and the chart's copy) from the Rust types (a test fails while it is stale)"
	@echo "make docs      regenerate docs/reference/ (CRD, command lines, metrics, chart values) from the code (tests fail while it is stale)"
	@echo "make fmt       format the code"
	@echo "make lint      clippy, as strict as CI"
	@echo "Services in the background for cargo test by hand: eval \"\$$(bash .ci/services.sh start)\""

local:
	cargo run --release -p taxi-worker -- local

test:
	bash .ci/test

chart-test:
	bash .ci/chart-test

ci:
	bash .ci/run

bench:
	cargo bench -p taxi-core --bench hot_path
	cargo bench -p taxi-io --bench io

bench-kinesis:
	bash bench/kinesis.sh

generate:
	cargo run --release -p taxi-worker -- generate --output trips.jsonl

crd:
	cargo run -q -p taxi-operator -- crd > crds/taxipipelines.yaml
	cp crds/taxipipelines.yaml charts/taxi-pipeline/files/crds/taxipipelines.yaml

docs:
	cargo run -q -p taxi-docgen
	python3 charts/tests/values_reference.py

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings
