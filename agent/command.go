package agent

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/agent/node"
)

// NewCommand returns the `agent` command, which runs the agent (Run) with
// its settings as flags, and its `node` subcommand, which runs the node
// software (node.Run). cmd/flotilla-agent is this command on its own;
// `flotilla agent` mounts the same one.
//
// Unless --node-binary is given, the node software is flotilla-node beside
// this executable, or else its own node subcommand, found by the command's
// path: `flotilla-agent node` or `flotilla agent node`.
func NewCommand() *cobra.Command {
	var (
		cfg      Config
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Flotilla node agent on an instance",
		Long: `Run the Flotilla node agent: join the fleet with a one-time token, keep a
mutually authenticated stream to the agent gateway, run the instance's setup
actions, install and start the node software, and report heartbeats and logs.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %q is not debug, info, warn or error", logLevel)
			}
			cfg.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if len(cfg.NodeBinary) == 0 {
				// The words after the program name in "flotilla agent", say.
				var err error
				if cfg.NodeBinary, err = defaultNodeBinary(strings.Fields(cmd.CommandPath())[1:]...); err != nil {
					return err
				}
			}
			cfg.Args = flagArgs(cmd.Flags())
			return RunUpgrading(cmd.Context(), cfg, func(up *Upgraded) error { return Exec(up, cmd.Flags()) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.GatewayAddr, "gateway", "", "the agent gateway's host:port (required)")
	f.StringVar(&cfg.CAFile, "ca-file", "", "PEM bundle of the fleet CA (required)")
	f.StringVar(&cfg.TokenFile, "token-file", "", "file holding the one-time join token (needed until the agent has a certificate)")
	f.StringVar(&cfg.Token, "token", "", "the one-time join token itself (prefer --token-file: flags show in ps)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory for the agent's key, certificate and state, mode 0700 (required)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "root of the instance's data disk (required)")
	f.IntVar(&cfg.DataDiskGB, "data-disk-gb", 0, "size of the data disk in GiB (required)")
	f.StringArrayVar(&cfg.DataDevices, "data-device", nil, "block device of the data disk, repeated for each name it may have: formatted when empty, mounted at --data-dir")
	f.DurationVar(&cfg.DataDeviceWait, "data-device-wait", DefaultDataDeviceWait, "how long to wait for --data-device to appear")
	f.StringVar(&cfg.VMID, "vm-id", "", "the provider's id of this VM (required)")
	f.StringArrayVar(&cfg.NodeBinary, "node-binary", nil, "command that runs the node software, one flag per word (default: this executable's node subcommand)")
	f.StringVar(&cfg.PackageInstaller, "package-installer", DefaultPackageInstaller, `command that installs packages, followed by their names; "none" only logs them`)
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", DefaultHeartbeatInterval, "how often to send a heartbeat")
	f.IntVar(&cfg.LogBufferLines, "log-buffer-lines", DefaultLogBufferLines, "log lines kept until the agent gateway acknowledges them (a program writing more waits)")
	f.StringVar(&logLevel, "log-level", "info", "level of the agent's own log on standard error: debug, info, warn or error")
	cmd.AddCommand(newNodeCommand())
	return cmd
}

// newNodeCommand returns the `node` subcommand: the node software of the
// local provider.
func newNodeCommand() *cobra.Command {
	var cfg node.Config
	cmd := &cobra.Command{
		Use:           "node",
		Short:         "Run the node software of the local provider: a page naming the instance",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Stdout = cmd.OutOrStdout()
			return node.Run(cmd.Context(), cfg)
		},
	}
	cfg.Bind(cmd.Flags())
	return cmd
}
