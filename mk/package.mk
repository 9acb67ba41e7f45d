# The Lambda package: `make package STAGE=dev` builds build/crm2calls-$(STAGE).zip offline with
# `zappa package`; `make check-package` checks it (size, contents, settings, bytecode, a smoke run).
# Included by the Makefile; `make test` depends on check-package, so CI builds and checks it.
STAGE ?= dev
PACKAGE := build/crm2calls-$(STAGE).zip
PACKAGE_SOURCES := app.py leads.toml zappa_settings.json requirements.txt requirements-dev.txt \
	scripts/build_package.sh $(shell find crm2calls schemas -name '*.py' -not -path '*/__pycache__/*')

.PHONY: package check-package

$(PACKAGE): $(PACKAGE_SOURCES)
	PYTHON=$(PYTHON) scripts/build_package.sh $(STAGE)

package: $(PACKAGE)

check-package: $(PACKAGE) | $(BIN)/python
	$(BIN)/python scripts/check_package.py $(PACKAGE)

test: check-package

# Deploy the checked zip itself (-z), with the build venv's Zappa: what CI tested is what runs. The role
# and the table must exist first (docs/deploy-lambda.md); -z skips Zappa's role management (manage_roles is false).
.PHONY: deploy update
deploy: check-package
	build/venv/bin/zappa deploy $(STAGE) -z $(PACKAGE)

update: check-package
	build/venv/bin/zappa update $(STAGE) -z $(PACKAGE)
