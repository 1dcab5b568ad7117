# Shortcuts for developers; the README's commands are the scripts themselves.
.PHONY: demo test lint pytest molecule build clean
demo:
	scripts/demo
test:
	scripts/test
lint:
	scripts/test lint
pytest:
	scripts/test pytest
molecule:
	scripts/test molecule
build:
	.venv/bin/ansible-galaxy collection build --force --output-path .cache/build .
clean:
	rm -rf .cache/build .cache/reports
