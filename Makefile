# Convenience targets; the scripts are the source of truth (README).
.PHONY: demo test setup
demo:
	scripts/demo.sh
test:
	scripts/test.sh
setup:
	scripts/setup.sh
