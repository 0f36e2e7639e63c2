// Package bootstrap renders the user data a cloud VM boots with: a POSIX
// shell script that downloads the agent binary of the manager's version,
// checks its SHA-256, installs it with a systemd unit (restarted always,
// started at boot) and starts it with the one-time join token, the fleet
// CA bundle and the agent gateway's address — the flags the local driver
// starts its agents with.
//
// For tests on one machine the script honours two variables: FLOTILLA_VM_ROOT
// prefixes every path it writes, and FLOTILLA_METADATA_URL replaces the
// instance metadata service it asks for the VM's own id (empty: do not ask).
// Without systemd (no systemctl, or not booted with it) it starts the agent
// directly with nohup, in the background.
package bootstrap

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"text/template"

	"flotilla.dev/flotilla/services/provisioner/driver"
)

// Paths of what the script installs, below FLOTILLA_VM_ROOT.
const (
	AgentPath   = "/usr/local/bin/flotilla-agent"
	UnitPath    = "/etc/systemd/system/flotilla-agent.service"
	ConfigDir   = "/etc/flotilla"
	StateDir    = "/var/lib/flotilla/agent"
	DataDir     = "/var/lib/flotilla/data"
	LogPath     = "/var/log/flotilla-agent.log"
	PIDPath     = "/var/lib/flotilla/agent.pid"
	TokenFile   = ConfigDir + "/join-token"
	CAFile      = ConfigDir + "/ca.pem"
	UnitName    = "flotilla-agent.service"
	metadataURL = "http://169.254.169.254"
)

// Script is the user data of the VM spec describes. vmID is the agent's
// --vm-id unless the VM's metadata service names the VM (EC2's instance
// id); a field the script needs that is missing or malformed is named in
// the error.
func Script(spec driver.VMSpec) (string, error) {
	b := spec.Bootstrap
	var errs []error
	if u, err := url.Parse(b.AgentURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("bootstrap.agentUrl: %q is not an http or https URL", b.AgentURL))
	}
	if sum, err := hex.DecodeString(b.AgentSHA256); err != nil || len(sum) != 32 {
		errs = append(errs, fmt.Errorf("bootstrap.agentSha256: %q is not a SHA-256 in hex (64 digits)", b.AgentSHA256))
	}
	if b.GatewayAddr == "" {
		errs = append(errs, errors.New("bootstrap.gatewayAddr: is required"))
	}
	if b.JoinToken == "" {
		errs = append(errs, errors.New("bootstrap.joinToken: is required"))
	}
	if !strings.Contains(b.CAPEM, "-----BEGIN CERTIFICATE-----") {
		errs = append(errs, errors.New("bootstrap.caPem: is not a PEM certificate bundle"))
	}
	if spec.ID == "" {
		errs = append(errs, errors.New("vm.id: is required"))
	}
	var devices []string
	for _, d := range b.DataDevices {
		if !strings.HasPrefix(d, "/dev/") {
			errs = append(errs, fmt.Errorf("bootstrap.dataDevices: %q is not a path under /dev", d))
		}
		devices = append(devices, quote(d))
	}
	if spec.DiskSizeGB <= 0 {
		errs = append(errs, fmt.Errorf("vm.diskSizeGb: %d is not a positive size", spec.DiskSizeGB))
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	var out bytes.Buffer
	err := script.Execute(&out, map[string]any{
		"DataDevices": devices,
		"AgentURL":    quote(b.AgentURL), "SHA256": quote(strings.ToLower(b.AgentSHA256)),
		"Version": quote(b.ManagerVersion), "Gateway": quote(b.GatewayAddr), "VMID": quote(spec.ID),
		"DiskGB": quote(strconv.Itoa(int(spec.DiskSizeGB))), "Token": quote(b.JoinToken), "CA": quote(b.CAPEM),
		"Metadata":  metadataURL,
		"AgentPath": AgentPath, "UnitPath": UnitPath, "ConfigDir": ConfigDir, "StateDir": StateDir,
		"DataDir": DataDir, "LogPath": LogPath, "PIDPath": PIDPath, "TokenFile": TokenFile, "CAFile": CAFile,
		"UnitName": UnitName,
	})
	if err != nil {
		return "", fmt.Errorf("render bootstrap script: %w", err)
	}
	return out.String(), nil
}

// quote is s as one shell word, in single quotes.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var script = template.Must(template.New("user-data").Parse(`#!/bin/sh
# Flotilla: install and start this VM's agent.
set -eu
umask 022

ROOT="${FLOTILLA_VM_ROOT:-}"
METADATA_URL="${FLOTILLA_METADATA_URL-{{.Metadata}}}"
AGENT_URL={{.AgentURL}}
AGENT_SHA256={{.SHA256}}
GATEWAY={{.Gateway}}
VM_ID={{.VMID}}
DATA_DISK_GB={{.DiskGB}}
MANAGER_VERSION={{.Version}}

BIN="$ROOT{{.AgentPath}}"
UNIT="$ROOT{{.UnitPath}}"
TOKEN_FILE="$ROOT{{.TokenFile}}"
CA_FILE="$ROOT{{.CAFile}}"
STATE_DIR="$ROOT{{.StateDir}}"
DATA_DIR="$ROOT{{.DataDir}}"
LOG="$ROOT{{.LogPath}}"
PID_FILE="$ROOT{{.PIDPath}}"

say() { echo "flotilla bootstrap: $*" >&2; }

# fetch URL FILE: download with curl or wget.
fetch() {
	if command -v curl >/dev/null 2>&1; then
		curl -fsSL --connect-timeout 10 -o "$2" "$1"
	elif command -v wget >/dev/null 2>&1; then
		wget -q -T 10 -O "$2" "$1"
	else
		say "neither curl nor wget is installed"
		return 1
	fi
}

# sha256 FILE: the file's SHA-256 in hex.
sha256() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	else
		openssl dgst -sha256 -r "$1" | cut -d' ' -f1
	fi
}

# The provider's own id of this VM (EC2's instance id), when its metadata
# service answers (IMDSv2 first, then v1).
if [ -n "$METADATA_URL" ] && command -v curl >/dev/null 2>&1; then
	imds_token=$(curl -fsS -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$METADATA_URL/latest/api/token" 2>/dev/null || true)
	own_id=$(curl -fsS -m 2 ${imds_token:+-H "X-aws-ec2-metadata-token: $imds_token"} "$METADATA_URL/latest/meta-data/instance-id" 2>/dev/null || true)
	case "$own_id" in
	i-*) VM_ID="$own_id" ;;
	esac
fi

mkdir -p "$(dirname "$BIN")" "$(dirname "$UNIT")" "$ROOT{{.ConfigDir}}" "$STATE_DIR" "$DATA_DIR" "$(dirname "$LOG")"
chmod 700 "$ROOT{{.ConfigDir}}" "$STATE_DIR"

# The agent binary: downloaded, checked, then installed.
tmp="$BIN.download"
rm -f "$tmp"
n=0
until fetch "$AGENT_URL" "$tmp"; do
	n=$((n + 1))
	if [ "$n" -ge 10 ]; then
		say "could not download the agent from $AGENT_URL"
		rm -f "$tmp"
		exit 1
	fi
	sleep "$n"
done
got=$(sha256 "$tmp")
if [ "$got" != "$AGENT_SHA256" ]; then
	say "the agent from $AGENT_URL has SHA-256 $got, not $AGENT_SHA256: not installed"
	rm -f "$tmp"
	exit 1
fi
chmod 755 "$tmp"
mv -f "$tmp" "$BIN"

umask 077
printf '%s\n' {{.Token}} >"$TOKEN_FILE"
printf '%s\n' {{.CA}} >"$CA_FILE"
umask 022

set -- --gateway "$GATEWAY" --ca-file "$CA_FILE" --token-file "$TOKEN_FILE" \
	--state-dir "$STATE_DIR" --data-dir "$DATA_DIR" --data-disk-gb "$DATA_DISK_GB" --vm-id "$VM_ID"
{{- range .DataDevices}}
set -- "$@" --data-device "$ROOT"{{.}}
{{- end}}

# The unit starts the agent at every boot and again whenever it fails; an
# agent released by its instance (agent.v1.Release) exits 0 and stays down.
{
	echo '[Unit]'
	echo 'Description=Flotilla agent'
	echo 'Wants=network-online.target'
	echo 'After=network-online.target'
	echo
	echo '[Service]'
	printf 'ExecStart=%s' "$BIN"
	for a in "$@"; do printf ' "%s"' "$a"; done
	echo
	echo 'Restart=on-failure'
	echo 'RestartSec=5'
	echo
	echo '[Install]'
	echo 'WantedBy=multi-user.target'
} >"$UNIT"

# systemd manages the real root only: a scratch root (FLOTILLA_VM_ROOT) runs
# the agent by itself.
if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	systemctl enable {{.UnitName}}
	systemctl restart {{.UnitName}}
	say "agent $MANAGER_VERSION installed and started as {{.UnitName}}"
else
	nohup "$BIN" "$@" >>"$LOG" 2>&1 </dev/null &
	echo "$!" >"$PID_FILE"
	say "agent $MANAGER_VERSION started without systemd, pid $!"
fi
`))
