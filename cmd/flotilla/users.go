package main

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// users are the API's users (admins manage them).
var users = &resource{
	plural: "users", singular: "user", aliases: []string{"user"}, nameField: "username",
	item: &authv1.User{}, list: &authv1.ListUsersResponse{},
	columns: columns("NAME=username", "ROLE=role", "MUST CHANGE PASSWORD=passwordChangeRequired", "CREATED=createTime",
		"VERSION=version", "ID=id"),
}

// usersCommand is `flotilla users`: list, get, create, set-role,
// reset-password and delete (admins).
func usersCommand(opts *clientOptions) *cobra.Command {
	reset := users.actionCommand(opts, action{verb: "reset-password",
		short: "Give users a random temporary password to hand over: their login sessions end, and they must choose their own at the next login",
		example: `  flotilla users reset-password ann
  flotilla users reset-password ann -o json | jq -r .temporaryPassword`,
		answer: &authv1.ResetPasswordResponse{},
		line: func(u, m proto.Message) string {
			name, pw := stringField(u, "username"), m.(*authv1.ResetPasswordResponse).GetTemporaryPassword()
			if pw == "" {
				return name + ": password reset, but the server answered no temporary password: reset it again to get one"
			}
			return fmt.Sprintf(`Temporary password for %s, shown only now; hand it over:
  %s
%s's login sessions have ended. Logged in with it, they may do nothing but
choose their own password (flotilla password). Their API tokens still work:
flotilla tokens list shows them, flotilla tokens revoke ends them.`, name, pw, name)
		}})
	return users.group(opts, "Manage users: list, show, create, set their role, reset their password, delete (admins)",
		`  flotilla users list
  flotilla users create ann --role operator       # asks the password
  flotilla users set-role ann viewer`,
		users.listCommand(opts), users.getCommand(opts), createUserCommand(opts), setRoleCommand(opts), reset, users.deleteCommand(opts))
}

func createUserCommand(opts *clientOptions) *cobra.Command {
	var (
		role          string
		passwordStdin bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME --role ROLE",
		Short: "Create a user with a role (viewer, operator or admin); the password is asked without echo, or read from standard input",
		Long: `Create a user: NAME is 1-64 letters, digits or . _ @ -, the role viewer,
operator or admin. The password (at least 8 characters) is asked twice on the
terminal without echo, or read from the first line of standard input with
--password-stdin; it is never a flag, so it stays out of the shell's history
and the process list.`,
		Example: `  flotilla users create ann --role operator
  printf '%s\n' "$PASSWORD" | flotilla users create ci-bot --role viewer --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkRoleFlag("--role", role); err != nil {
				return err
			}
			pw, err := readPasswords(cmd, passwordStdin, true, "Password")
			if err != nil {
				return err
			}
			s, err := opts.session()
			if err != nil {
				return err
			}
			u := &authv1.User{}
			if err := s.call(cmd.Context(), http.MethodPost, users.path(),
				jsonBody(map[string]string{"username": args[0], "password": pw[0], "role": role}), u); err != nil {
				return fmt.Errorf("create user %q: %w", args[0], err)
			}
			return users.report(cmd.OutOrStdout(), opts, u, "created as "+u.GetRole())
		},
	}
	roleFlag(cmd, &role, "the user's role")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of standard input")
	return cmd
}

func setRoleCommand(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "set-role NAME|ID ROLE",
		Short: "Change a user's role (viewer, operator or admin); it applies at once to every token of theirs",
		Long: `Change a user's role, at the version just read (a change made meanwhile is
refused, not overwritten). It applies at once to the user's login sessions and
API tokens (a token's role is capped by its user's). The last admin keeps the
role.`,
		Example: "  flotilla users set-role ann viewer",
		Args:    cobra.ExactArgs(2),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return completeRoles(cmd, args, prefix)
			}
			return users.completeNames(opts)(cmd, args, prefix)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkRoleFlag("ROLE", args[1]); err != nil {
				return err
			}
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			found, err := s.find(cmd.Context(), users, args[0])
			if err != nil {
				return err
			}
			cur := found.(*authv1.User)
			u := &authv1.User{}
			if err := s.call(cmd.Context(), http.MethodPatch, users.path()+"/"+cur.GetId(),
				jsonBody(map[string]any{"version": fmt.Sprint(cur.GetVersion()), "role": args[1]}), u); err != nil {
				return fmt.Errorf("set the role of %s: %w", cur.GetUsername(), err)
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, u)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s: role %s (was %s; version %d)\n", u.GetUsername(), u.GetRole(), cur.GetRole(), u.GetVersion())
			return nil
		},
	}
}

// roleFlag adds the required --role flag, completed with the roles.
func roleFlag(cmd *cobra.Command, role *string, usage string) {
	cmd.Flags().StringVar(role, "role", "", usage+": "+strings.Join(roleNames(), ", "))
	_ = cmd.MarkFlagRequired("role")
	_ = cmd.RegisterFlagCompletionFunc("role", completeRoles)
}

func roleNames() []string {
	out := make([]string, len(vocab.Roles))
	for i, r := range vocab.Roles {
		out[i] = string(r)
	}
	return out
}

// checkRoleFlag says which roles there are when what names none.
func checkRoleFlag(what, role string) error {
	if !vocab.Role(role).Valid() {
		return fmt.Errorf("%s: %q is not a role: %s", what, role, strings.Join(roleNames(), ", "))
	}
	return nil
}

func completeRoles(_ *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	for _, r := range roleNames() {
		if strings.HasPrefix(r, prefix) {
			out = append(out, r)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// mustChangePassword is what a user whose password an admin reset is told.
const mustChangePassword = "An admin set your password: choose your own with flotilla password before anything else."

// passwordCommand is `flotilla password`: change one's own password.
func passwordCommand(opts *clientOptions) *cobra.Command {
	var passwordStdin bool
	cmd := &cobra.Command{
		Use:     "password",
		Aliases: []string{"passwd"},
		Short:   "Change your own password (also the temporary one an admin reset)",
		Long: `Change the password of the user logged in (the context's), with a login
session (not an API token). The current password and the new one (at least 8
characters, not the current one) are asked on the terminal without echo, the
new one twice, or read from standard input with --password-stdin: the current
on the first line, the new on the second. Your other login sessions end; this
one goes on. After an admin reset your password, this is the one thing to do
before anything else.`,
		Example: `  flotilla password
  printf '%s\n%s\n' "$OLD" "$NEW" | flotilla password --password-stdin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			pw, err := readPasswords(cmd, passwordStdin, true, "Current password", "New password")
			if err != nil {
				return err
			}
			if err := c.call(cmd.Context(), http.MethodPost, users.path()+"/me:change-password",
				jsonBody(map[string]string{"currentPassword": pw[0], "newPassword": pw[1]}), nil); err != nil {
				return fmt.Errorf("change your password on %s: %w", c.server, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Password changed on %s; your other login sessions have ended.\n", c.server)
			return nil
		},
	}
	opts.flags(cmd)
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the current password and the new one from standard input, a line each")
	return cmd
}

// whoamiCommand is `flotilla whoami`: the user the token belongs to.
func whoamiCommand(opts *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show the user the token belongs to, and their role",
		Example: `  flotilla whoami
  flotilla whoami -o json | jq -r .role`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			u := &authv1.User{}
			if err := s.call(cmd.Context(), http.MethodGet, users.path()+"/me", nil, u); err != nil {
				return err
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, u)
			}
			where := s.server
			if s.context != "" {
				where += " (context " + s.context + ")"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s, role %s, on %s\n", u.GetUsername(), u.GetRole(), where)
			if u.GetPasswordChangeRequired() {
				fmt.Fprintln(cmd.OutOrStdout(), mustChangePassword)
			}
			return nil
		},
	}
	opts.flags(cmd)
	return cmd
}
