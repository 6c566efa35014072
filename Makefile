# handoff: one Makefile for setup, build, the main job and the tests.
# Everything the project needs is installed from here; nothing by hand.

export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := bin/handoff

# Debian packages the lab, the tests and the benchmarks use.
DEB_PACKAGES := libvirt-daemon libvirt-daemon-driver-qemu \
	libvirt-clients busybox-static cpio iproute2 tmux etcd-server etcd-client \
	rsync e2fsprogs openssh-client openssh-server nftables zstd debootstrap xvfb xterm imagemagick tesseract-ocr tesseract-ocr-eng xdotool kitty

.PHONY: all deps build grab test bench lab-down clean

all: build

# QEMU comes from bookworm-backports (10.0): these machines have no KVM, and
# QEMU before 9.0 loses guest writes in a live migration under TCG (its
# commit 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with TCG
# memory access", among others): measured on the lab, one migration in 20 to
# 100 left the guest with memory it never wrote, or a kernel that died. A
# user's server with KVM is not affected; handoff itself works with both.
QEMU_PACKAGES := qemu-system-x86 qemu-utils qemu-system-common qemu-system-data
QEMU_AT_LEAST := 1:9.0
BACKPORTS := /etc/apt/sources.list.d/handoff-bookworm-backports.sources

# Installs what is missing; quick when everything is there already.
deps:
	@if ! dpkg --compare-versions "$$(dpkg-query -W -f='$${Version}' qemu-system-x86 2>/dev/null)" ge $(QEMU_AT_LEAST); then \
	  echo "installing QEMU from bookworm-backports (TCG migrates safely from QEMU 9.0 on)"; \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $(BACKPORTS); \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports $(QEMU_PACKAGES) >/dev/null; \
	fi
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# the SSH server is installed for the qemu+ssh tests only; it must not run by itself
	@systemctl disable --now ssh >/dev/null 2>&1 || true

# The guest agent goes beside handoff, where the test guest's builder looks.
build:
	$(GO) build -o $(BIN) ./cmd/handoff
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/handoff-guest ./testvm/guestagent

# The main job: start the built-in lab (if it is not up) and grab its VM.
grab: deps build
	$(BIN) grab

# Lab tests share one machine: run packages one at a time.
test: deps build
	$(GO) vet ./...
	HANDOFF_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -count=1 -timeout 45m ./...

bench: deps build
	$(BIN) bench

lab-down: build
	$(BIN) lab down

clean:
	rm -rf bin
