package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// resource describes one collection of the API (/api/v1/<plural>) for the
// generic commands: list, get, create, apply and delete. A new collection
// is a resource value and one AddCommand:
//
//	var templates = &resource{plural: "templates", singular: "template",
//		item: &inventoryv1.Template{}, list: &inventoryv1.ListTemplatesResponse{},
//		columns: columns("NAME=name", "IMAGE=image", "VERSION=version", "ID=id")}
//	root.AddCommand(templates.command(opts))
//
// A collection with verbs of its own (users, tokens) picks the generic
// ones it keeps and adds its own with group.
type resource struct {
	// plural is the command's and the path's name ("cloud-accounts");
	// singular names one in messages ("cloud account").
	plural, singular string
	aliases          []string
	// item and list are zero values of the resource's message and of its
	// list answer (one repeated field of items and next_page_token).
	item, list proto.Message
	// nameField is the JSON name of the field that names an item uniquely
	// ("name" when empty).
	nameField string
	columns   []column
	// refs are the fields of a file that hold another resource's id: a
	// name may be given there instead.
	refs map[string]*resource
	// noUpdate: the API has no PATCH for it, so there is no apply.
	noUpdate bool
	// noGet: the API has no GET <path>/<id>; an id is looked up in the list.
	noGet bool
	// searchable: the list takes query=TEXT and lets through only the
	// items whose name (among other fields) holds it.
	searchable bool
	// filters are list's flags that the API filters by, shown in use by
	// listExample.
	filters     []listFilter
	listExample string
	// deleteVerb is the command that deletes one ("revoke"; "delete" when
	// empty).
	deleteVerb string
	// example is a file create and apply take, shown in their help.
	example string
	// deleted, when set, is called after each delete with the API's answer;
	// with it, delete has --wait (for resources the server removes in the
	// background).
	deleted func(ctx context.Context, s *session, answer []byte, wait waitOptions, w io.Writer) error
	// forceDelete, when set, is the usage of delete's --force (the API's
	// force=true).
	forceDelete string
	// changedNote, when set, says what more an apply's change calls for
	// ("" for nothing), from the item before and after.
	changedNote func(before, after proto.Message) string
	// detail, when set, is what get shows of each item after its row, as a
	// table (a rollout's instances).
	detail func(w io.Writer, item proto.Message) error
}

// column is a table column: a header and the JSON path of the field it
// shows ("agent.status"); with ref, the field holds the id of an item of
// ref, shown by its name, and with version, the JSON path of the version
// of that item the row was made from (0: none), shown when older than the
// item's.
type column struct {
	header, path string
	ref          *resource
	version      string
}

// columns makes columns of "HEADER=path" pairs.
func columns(specs ...string) []column {
	out := make([]column, len(specs))
	for i, s := range specs {
		h, p, _ := strings.Cut(s, "=")
		out[i] = column{header: h, path: p}
	}
	return out
}

func (r *resource) path() string { return "/api/v1/" + r.plural }

func (r *resource) nameJSON() string {
	if r.nameField == "" {
		return "name"
	}
	return r.nameField
}

// newItem returns an empty item.
func (r *resource) newItem() proto.Message { return r.item.ProtoReflect().New().Interface() }

// itemsField is the list answer's repeated field of items.
func (r *resource) itemsField() protoreflect.FieldDescriptor {
	fields := r.list.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if f := fields.Get(i); f.IsList() && f.Message() != nil && f.Message().FullName() == r.item.ProtoReflect().Descriptor().FullName() {
			return f
		}
	}
	panic("resource " + r.plural + ": the list message has no repeated field of items")
}

// session is one command's use of the API: the client, and the lists it
// read to find items by name (read once per command).
type session struct {
	*apiClient
	lists map[*resource][]proto.Message
	// pageSize is how many items a list request asks for.
	pageSize int
}

// session resolves the client for a command.
func (o *clientOptions) session() (*session, error) {
	c, err := o.client()
	if err != nil {
		return nil, err
	}
	return &session{apiClient: c, lists: map[*resource][]proto.Message{}, pageSize: 500}, nil
}

// start resolves the output format asked for cmd and opens a session.
func (o *clientOptions) start(cmd *cobra.Command) (*session, string, error) {
	format, err := o.format(cmd.OutOrStdout())
	if err != nil {
		return nil, "", err
	}
	s, err := o.session()
	if err != nil {
		return nil, "", err
	}
	return s, format, nil
}

// all reads every item of r, page by page.
func (s *session) all(ctx context.Context, r *resource) ([]proto.Message, error) {
	if items, ok := s.lists[r]; ok {
		return items, nil
	}
	items, err := s.list(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	s.lists[r] = items
	return items, nil
}

// list reads every page of r's list that the query parameters filter
// lets through.
func (s *session) list(ctx context.Context, r *resource, filter url.Values) ([]proto.Message, error) {
	var items []proto.Message
	f := r.itemsField()
	token := ""
	for {
		q := url.Values{"pageSize": {strconv.Itoa(s.pageSize)}}
		for k, v := range filter {
			q[k] = v
		}
		if token != "" {
			q.Set("pageToken", token)
		}
		page := r.list.ProtoReflect().New().Interface()
		if err := s.call(ctx, http.MethodGet, r.path()+"?"+q.Encode(), nil, page); err != nil {
			return nil, err
		}
		l := page.ProtoReflect().Get(f).List()
		for i := range l.Len() {
			items = append(items, l.Get(i).Message().Interface())
		}
		token = stringField(page, "nextPageToken")
		if token == "" {
			return items, nil
		}
	}
}

// named reads the items of r that may be named name: those whose name
// holds it, where r's list searches (so a name is found in one short
// list, not among every item), else all.
func (s *session) named(ctx context.Context, r *resource, name string) ([]proto.Message, error) {
	switch _, read := s.lists[r]; {
	case read || !r.searchable:
		return s.all(ctx, r)
	case len(name) > maxSearch:
		return nil, nil // longer than any name, and than a search may be
	}
	return s.list(ctx, r, url.Values{"query": {name}})
}

// maxSearch is the longest query=TEXT a list takes.
const maxSearch = 200

// find returns the item of r named nameOrID, or with that id. A name
// several items have (API tokens of different users) is refused: the id
// tells them apart.
func (s *session) find(ctx context.Context, r *resource, nameOrID string) (proto.Message, error) {
	if isID(nameOrID) && !r.noGet {
		it := r.newItem()
		err := s.call(ctx, http.MethodGet, r.path()+"/"+nameOrID, nil, it)
		if err == nil {
			return it, nil
		}
		if !isNotFound(err) {
			return nil, err
		}
	}
	items, err := s.named(ctx, r, nameOrID)
	if err != nil {
		return nil, err
	}
	var named []proto.Message
	for _, it := range items {
		if r.noGet && stringField(it, "id") == nameOrID {
			return it, nil
		}
		if stringField(it, r.nameJSON()) == nameOrID {
			named = append(named, it)
		}
	}
	switch len(named) {
	case 0:
		return nil, &apiError{Status: http.StatusNotFound, Reason: "not_found", Message: fmt.Sprintf("no %s named %q", r.singular, nameOrID)}
	case 1:
		return named[0], nil
	}
	ids := make([]string, len(named))
	for i, it := range named {
		ids[i] = stringField(it, "id")
	}
	return nil, fmt.Errorf("%d %ss are named %q: give the id of one (%s)", len(named), r.singular, nameOrID, strings.Join(ids, ", "))
}

// byName returns the item of r named name, or nil.
func (s *session) byName(ctx context.Context, r *resource, name string) (proto.Message, error) {
	items, err := s.named(ctx, r, name)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if stringField(it, r.nameJSON()) == name {
			return it, nil
		}
	}
	return nil, nil
}

// itemOf is r's item id, nil when it cannot be read.
func (s *session) itemOf(ctx context.Context, r *resource, id string) proto.Message {
	items, err := s.all(ctx, r)
	if err != nil {
		return nil
	}
	for _, it := range items {
		if stringField(it, "id") == id {
			return it
		}
	}
	return nil
}

// refCell is a ref column's cell: the item's name, and with c.version, the
// version of it the row was made from when the item is newer now
// ("small (v2, now v3)").
func (s *session) refCell(ctx context.Context, m proto.Message, c column, id string) string {
	it := s.itemOf(ctx, c.ref, id)
	if it == nil {
		return id
	}
	name := stringField(it, c.ref.nameJSON())
	if c.version == "" {
		return name
	}
	if behind := vocab.TemplateBehind(intField(m, c.version), intField(it, "version")); behind != "" {
		return name + " (" + behind + ")"
	}
	return name
}

// isID reports whether s has the form of a server-assigned id (a UUID).
func isID(s string) bool {
	_, err := uuid.Parse(s)
	return err == nil && len(s) == 36
}

// field returns the value at a JSON path ("agent.status") of m, and its
// descriptor; ok is false when the path names no field.
func field(m protoreflect.Message, path string) (protoreflect.Value, protoreflect.FieldDescriptor, bool) {
	segs := strings.Split(path, ".")
	for i, seg := range segs {
		fd := m.Descriptor().Fields().ByJSONName(seg)
		if fd == nil {
			return protoreflect.Value{}, nil, false
		}
		if i == len(segs)-1 {
			return m.Get(fd), fd, true
		}
		if fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return protoreflect.Value{}, nil, false
		}
		m = m.Get(fd).Message()
	}
	return protoreflect.Value{}, nil, false
}

// intField returns an int64 field at a JSON path of m, 0 if none.
func intField(m proto.Message, path string) int64 {
	v, fd, ok := field(m.ProtoReflect(), path)
	if !ok || fd.Kind() != protoreflect.Int64Kind || fd.IsList() {
		return 0
	}
	return v.Int()
}

// stringField returns a string field at a JSON path of m, "" if none.
func stringField(m proto.Message, path string) string {
	v, fd, ok := field(m.ProtoReflect(), path)
	if !ok || fd.Kind() != protoreflect.StringKind || fd.IsList() {
		return ""
	}
	return v.String()
}

// cell formats one field for a table.
func (s *session) cell(ctx context.Context, m proto.Message, c column) string {
	v, fd, ok := field(m.ProtoReflect(), c.path)
	if !ok {
		return "-"
	}
	switch {
	case fd.IsList():
		return strconv.Itoa(v.List().Len())
	case fd.IsMap():
		return strconv.Itoa(v.Map().Len())
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		if c.ref != nil && v.String() != "" {
			return s.refCell(ctx, m, c, v.String())
		}
		return dash(v.String())
	case protoreflect.BoolKind:
		return yesNo(v.Bool())
	case protoreflect.MessageKind:
		switch t := v.Message().Interface().(type) {
		case *timestamppb.Timestamp:
			if !v.Message().IsValid() {
				return "-"
			}
			return ago(t.AsTime())
		case *durationpb.Duration:
			return t.AsDuration().String()
		}
		return "-"
	}
	return fmt.Sprint(v.Interface())
}

// ago says how long ago t was, or how soon it is (an expiry), briefly.
func ago(t time.Time) string {
	if d := time.Until(t); d > 0 {
		return "in " + span(d)
	}
	return span(time.Since(t)) + " ago"
}

// span is a duration in its largest whole unit: 42s, 5m, 12h, 30d.
func span(d time.Duration) string {
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

// printItems prints items of r as a table, or as the API's list answer
// holding them all (json, yaml): its totalSize, where it has one, counts
// them.
func (s *session) printItems(ctx context.Context, w io.Writer, format string, r *resource, items []proto.Message) error {
	if format != formatTable {
		list := r.list.ProtoReflect().New()
		l := list.Mutable(r.itemsField()).List()
		for _, it := range items {
			l.Append(protoreflect.ValueOfMessage(it.ProtoReflect()))
		}
		if total := list.Descriptor().Fields().ByName("total_size"); total != nil {
			list.Set(total, protoreflect.ValueOfInt32(int32(min(len(items), math.MaxInt32))))
		}
		return writeMessage(w, format, list.Interface())
	}
	rows := make([][]string, 0, len(items)+1)
	var head []string
	for _, c := range r.columns {
		head = append(head, c.header)
	}
	rows = append(rows, head)
	for _, it := range items {
		var row []string
		for _, c := range r.columns {
			row = append(row, s.cell(ctx, it, c))
		}
		rows = append(rows, row)
	}
	return writeTable(w, rows)
}

// command is `flotilla <plural>` with the generic verbs, then more.
func (r *resource) command(opts *clientOptions, more ...*cobra.Command) *cobra.Command {
	verbs := []*cobra.Command{r.listCommand(opts), r.getCommand(opts), r.createCommand(opts)}
	if !r.noUpdate {
		verbs = append(verbs, r.applyCommand(opts))
	}
	verbs = append(verbs, r.deleteCommand(opts))
	return r.group(opts, fmt.Sprintf("List, show, create, change and delete %ss", r.singular),
		fmt.Sprintf("  flotilla %s list\n  flotilla %s get NAME -o yaml", r.plural, r.plural), append(verbs, more...)...)
}

// group is `flotilla <plural>` with the verbs given, and the client flags.
func (r *resource) group(opts *clientOptions, short, example string, verbs ...*cobra.Command) *cobra.Command {
	group := &cobra.Command{Use: r.plural, Aliases: r.aliases, Short: short, Example: example}
	opts.flags(group)
	group.AddCommand(verbs...)
	return group
}

// listFilter is a flag of list that the API filters by: its value is
// the query parameter param, or the id of the ref named by it.
type listFilter struct {
	flag, param, usage string
	ref                *resource
}

func (r *resource) listCommand(opts *clientOptions) *cobra.Command {
	var pageSize int
	values := make([]string, len(r.filters))
	example := fmt.Sprintf("  flotilla %s list\n  flotilla %s list -o json | jq -r '.%s[].%s'", r.plural, r.plural,
		r.itemsField().JSONName(), r.nameJSON())
	short := fmt.Sprintf("List every %s (all pages)", r.singular)
	if len(r.filters) > 0 {
		short = fmt.Sprintf("List every %s, or those the filters let through (all pages)", r.singular)
		example += "\n" + r.listExample
	}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   short,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pageSize < 1 || pageSize > 500 {
				return fmt.Errorf("--page-size: %d is not between 1 and 500", pageSize)
			}
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			s.pageSize = pageSize
			filter := url.Values{}
			for i, f := range r.filters {
				v := values[i]
				if v == "" {
					continue
				}
				if f.ref != nil {
					it, err := s.find(cmd.Context(), f.ref, v)
					if err != nil {
						return fmt.Errorf("--%s: %w", f.flag, err)
					}
					v = stringField(it, "id")
				}
				filter.Set(f.param, v)
			}
			items, err := s.list(cmd.Context(), r, filter)
			if err != nil {
				return r.filterError(err)
			}
			return s.printItems(cmd.Context(), cmd.OutOrStdout(), format, r, items)
		},
	}
	cmd.Flags().IntVar(&pageSize, "page-size", 500, "how many to ask for in each request (1-500); every page is read")
	for i, f := range r.filters {
		cmd.Flags().StringVar(&values[i], f.flag, "", f.usage)
	}
	return cmd
}

// filterError is a list's err with the flag named that the API refused
// as its query parameter (--sort for orderBy).
func (r *resource) filterError(err error) error {
	var e *apiError
	if !errors.As(err, &e) || e.Reason != string(apierr.ReasonInvalidField) {
		return err
	}
	for _, f := range r.filters {
		if f.param == e.Field {
			return fmt.Errorf("--%s: %s (%s)", f.flag, strings.TrimPrefix(e.Message, f.param+": "), e.Reason)
		}
	}
	return err
}

func (r *resource) getCommand(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "get NAME|ID...",
		Short:             fmt.Sprintf("Show %ss by name or id", r.singular),
		Example:           r.getExample(),
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: r.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			var items []proto.Message
			for _, a := range args {
				it, err := s.find(cmd.Context(), r, a)
				if err != nil {
					return err
				}
				items = append(items, it)
			}
			if len(items) == 1 && format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, items[0])
			}
			if err := s.printItems(cmd.Context(), cmd.OutOrStdout(), format, r, items); err != nil {
				return err
			}
			if r.detail != nil && format == formatTable {
				for _, it := range items {
					if err := r.detail(cmd.OutOrStdout(), it); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
}

// getExample is get's example: with apply, when the API can update one.
func (r *resource) getExample() string {
	if r.noUpdate {
		return fmt.Sprintf("  flotilla %s get NAME\n  flotilla %s get NAME -o yaml", r.plural, r.plural)
	}
	return fmt.Sprintf("  flotilla %s get NAME\n  flotilla %s get NAME -o yaml > %s.yaml   # edit, then: flotilla %s apply -f %s.yaml",
		r.plural, r.plural, r.singularWord(), r.plural, r.singularWord())
}

// singularWord is the singular as one word ("cloud-account").
func (r *resource) singularWord() string { return strings.ReplaceAll(r.singular, " ", "-") }

func (r *resource) createCommand(opts *clientOptions) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "create -f FILE",
		Short: fmt.Sprintf("Create %ss from a YAML or JSON file (- for standard input)", r.singular),
		Long: fmt.Sprintf(`Create %ss from a file: YAML or JSON with the API's field names (see
/api/v1/openapi.json), several YAML documents for several. Fields that hold
another resource's id may name it instead.`, r.singular),
		Example: r.fileExample("create"),
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return r.eachDoc(cmd, opts, file, func(ctx context.Context, s *session, d *document, w io.Writer) error {
				body, err := d.body()
				if err != nil {
					return err
				}
				it := r.newItem()
				if err := s.call(ctx, http.MethodPost, r.path(), body, it); err != nil {
					return fmt.Errorf("%s: create %s %q: %w", d.where, r.singular, d.name, err)
				}
				return r.report(w, opts, it, "created")
			})
		},
	}
	fileFlag(cmd, &file)
	return cmd
}

func (r *resource) applyCommand(opts *clientOptions) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: fmt.Sprintf("Create %ss from a file, or change those that exist (by name)", r.singular),
		Long: fmt.Sprintf(`Create each %s of a YAML or JSON file (- for standard input) that does not
exist, and change the fields the file sets of each that does, found by name.
A change is made at the version the file holds (as flotilla %s get -o yaml
writes it) or else at the version just read: if the %s changed since, the
API refuses it and nothing is overwritten.`, r.singular, r.plural, r.singular),
		Example: r.fileExample("apply"),
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return r.eachDoc(cmd, opts, file, func(ctx context.Context, s *session, d *document, w io.Writer) error {
				if d.name == "" {
					return fmt.Errorf("%s: %s: is required to apply (it finds the %s to change)", d.where, r.nameJSON(), r.singular)
				}
				cur, err := s.byName(ctx, r, d.name)
				if err != nil {
					return err
				}
				it := r.newItem()
				if cur == nil {
					body, err := d.body()
					if err != nil {
						return err
					}
					if err := s.call(ctx, http.MethodPost, r.path(), body, it); err != nil {
						return fmt.Errorf("%s: create %s %q: %w", d.where, r.singular, d.name, err)
					}
					return r.report(w, opts, it, "created")
				}
				if _, ok := d.fields["version"]; !ok {
					if read, ok := versionOf(cur); ok {
						d.fields["version"] = strconv.FormatInt(read, 10)
					}
				}
				body, err := d.body()
				if err != nil {
					return err
				}
				if err := s.call(ctx, http.MethodPatch, r.path()+"/"+stringField(cur, "id"), body, it); err != nil {
					return fmt.Errorf("%s: change %s %q at version %v: %w", d.where, r.singular, d.name, d.fields["version"], err)
				}
				// The API writes nothing, and keeps the version, when the
				// file changes nothing.
				if before, ok := versionOf(cur); ok {
					if after, ok := versionOf(it); ok && after == before {
						return r.report(w, opts, it, "unchanged")
					}
				}
				if err := r.report(w, opts, it, "changed"); err != nil || r.changedNote == nil {
					return err
				}
				if note := r.changedNote(cur, it); note != "" {
					_, err = fmt.Fprintln(cmd.ErrOrStderr(), note)
				}
				return err
			})
		},
	}
	fileFlag(cmd, &file)
	return cmd
}

func fileFlag(cmd *cobra.Command, file *string) {
	cmd.Flags().StringVarP(file, "filename", "f", "", "the YAML or JSON file (- for standard input)")
	_ = cmd.MarkFlagRequired("filename")
	_ = cmd.MarkFlagFilename("filename", "yaml", "yml", "json")
}

func (r *resource) fileExample(verb string) string {
	var b strings.Builder
	if r.example != "" {
		fmt.Fprintf(&b, "  cat > %s.yaml <<EOF\n", r.singularWord())
		for l := range strings.Lines(r.example) {
			b.WriteString("  " + l)
		}
		b.WriteString("  EOF\n")
	}
	fmt.Fprintf(&b, "  flotilla %s %s -f %s.yaml", r.plural, verb, r.singularWord())
	if verb == "apply" {
		fmt.Fprintf(&b, "\n  flotilla %s get NAME -o yaml > %s.yaml   # edit it, then apply: refused if it changed meanwhile", r.plural, r.singularWord())
	}
	return b.String()
}

// eachDoc reads the documents of file and does each in turn, stopping at
// the first error.
func (r *resource) eachDoc(cmd *cobra.Command, opts *clientOptions, file string,
	do func(context.Context, *session, *document, io.Writer) error,
) error {
	if err := opts.checkOutput(cmd.OutOrStdout()); err != nil {
		return err
	}
	docs, err := readDocuments(file, cmd.InOrStdin(), r)
	if err != nil {
		return err
	}
	s, err := opts.session()
	if err != nil {
		return err
	}
	for _, d := range docs {
		if err := d.resolveRefs(cmd.Context(), s, r); err != nil {
			return err
		}
		if err := do(cmd.Context(), s, d, cmd.OutOrStdout()); err != nil {
			return err
		}
	}
	return nil
}

// report prints what create or apply did: the item (-o json|yaml) or a line.
func (r *resource) report(w io.Writer, opts *clientOptions, it proto.Message, what string) error {
	if opts.output == formatJSON || opts.output == formatYAML {
		return writeMessage(w, opts.output, it)
	}
	line := fmt.Sprintf("%s %s %s (id %s", r.singular, stringField(it, r.nameJSON()), what, stringField(it, "id"))
	if v, ok := versionOf(it); ok {
		line += fmt.Sprintf(", version %d", v)
	}
	_, err := fmt.Fprintln(w, line+")")
	return err
}

// versionOf returns an item's version, if its kind has one.
func versionOf(m proto.Message) (int64, bool) {
	v, fd, ok := field(m.ProtoReflect(), "version")
	if !ok || fd.Kind() != protoreflect.Int64Kind {
		return 0, false
	}
	return v.Int(), true
}

func (r *resource) deleteCommand(opts *clientOptions) *cobra.Command {
	var wait waitOptions
	var force bool
	verb, aliases := cmp.Or(r.deleteVerb, "delete"), []string{"rm"}
	if verb != "delete" {
		aliases = append(aliases, "delete")
	}
	cmd := &cobra.Command{
		Use:               verb + " NAME|ID...",
		Aliases:           aliases,
		Short:             fmt.Sprintf("%s %ss by name or id", strings.ToUpper(verb[:1])+verb[1:], r.singular),
		Example:           fmt.Sprintf("  flotilla %s %s NAME", r.plural, verb),
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: r.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			for _, a := range args {
				it, err := s.find(ctx, r, a)
				if err != nil {
					return err
				}
				name := stringField(it, r.nameJSON())
				path := r.path() + "/" + stringField(it, "id")
				if force {
					path += "?force=true"
				}
				answer, err := s.send(ctx, http.MethodDelete, path, nil)
				if err != nil {
					return fmt.Errorf("%s %s %q: %w", verb, r.singular, name, err)
				}
				if r.deleted != nil {
					if err := r.deleted(ctx, s, answer, wait, cmd.OutOrStdout()); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s %sd\n", r.singular, name, verb)
			}
			return nil
		},
	}
	if r.deleted != nil {
		wait.flags(cmd, "until it is gone")
		cmd.Example += " --wait"
	}
	if r.forceDelete != "" {
		cmd.Flags().BoolVar(&force, "force", false, r.forceDelete)
		cmd.Example += fmt.Sprintf("\n  flotilla %s %s NAME --force --wait", r.plural, verb)
	}
	return cmd
}

// completeNames completes the names of r's items (for shells).
func (r *resource) completeNames(opts *clientOptions) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
		s, err := opts.session()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
		defer cancel()
		items, err := s.all(ctx, r)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, it := range items {
			if n := stringField(it, r.nameJSON()); strings.HasPrefix(n, prefix) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// jsonBody encodes a request body.
func jsonBody(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// action is a command that asks the API to act on items of r
// (POST <path>/<id>:<verb>) and prints each answer: as line says (table),
// or the whole answer (json, yaml).
type action struct {
	verb, short, example string
	// answer is a zero value of the answer; body, when set, is the request
	// body (default {}); line says what the answer about item means.
	answer proto.Message
	body   func() []byte
	line   func(item, answer proto.Message) string
	// after, when set, is called with each answer whatever the format.
	after func(answer proto.Message) error
}

func (r *resource) actionCommand(opts *clientOptions, a action) *cobra.Command {
	return &cobra.Command{
		Use:               a.verb + " NAME|ID...",
		Short:             a.short,
		Example:           a.example,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: r.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			for _, arg := range args {
				it, err := s.find(cmd.Context(), r, arg)
				if err != nil {
					return err
				}
				name := stringField(it, r.nameJSON())
				body := []byte("{}")
				if a.body != nil {
					body = a.body()
				}
				answer := a.answer.ProtoReflect().New().Interface()
				if err := s.call(cmd.Context(), http.MethodPost, r.path()+"/"+stringField(it, "id")+":"+a.verb, body, answer); err != nil {
					return fmt.Errorf("%s %s: %w", cmd.Name(), name, err)
				}
				if a.after != nil {
					if err := a.after(answer); err != nil {
						return err
					}
				}
				if format != formatTable {
					if err := writeMessage(cmd.OutOrStdout(), format, answer); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), a.line(it, answer))
			}
			return nil
		},
	}
}
