package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// document is one resource read from a file, as the JSON object sent to
// the API: only the fields the file sets, so that a change sets exactly
// those (a false or empty value included).
type document struct {
	// where names the document in messages ("lab.yaml", "lab.yaml#2").
	where string
	// name is its name field, "" when it has none.
	name   string
	fields map[string]any
	r      *resource
}

// readDocuments reads the YAML (or JSON) documents of file, "-" for in,
// as items of r. Each is checked against r's message: an unknown field or a
// value of the wrong type is an error naming the file and the field.
// Fields the server sets (id, state, times, ...) are left out, as are
// write-only fields left empty (a secret that `get` does not show).
func readDocuments(file string, in io.Reader, r *resource) ([]*document, error) {
	name := file
	if file == "-" {
		name = "standard input"
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		in = f
	}
	dec := yaml.NewDecoder(in)
	var docs []*document
	for i := 1; ; i++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if len(n.Content) == 0 || n.Content[0].Tag == "!!null" {
			continue
		}
		where := name
		if i > 1 {
			where = fmt.Sprintf("%s#%d", name, i)
		}
		fields, err := messageFields(n.Content[0], r.item.ProtoReflect().Descriptor(), "")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		d := &document{where: where, fields: fields, r: r}
		d.name, _ = fields[r.nameJSON()].(string)
		if _, err := d.check(); err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s: holds no %s", name, r.singular)
	}
	for i := range docs {
		if d := docs[i]; d.name != "" && slices.ContainsFunc(docs[:i], func(o *document) bool { return o.name == d.name }) {
			return nil, fmt.Errorf("%s: %s %q is in the file twice", d.where, r.singular, d.name)
		}
	}
	return docs, nil
}

// body is the JSON object to send.
func (d *document) body() ([]byte, error) { return d.check() }

// check encodes the document and checks it decodes as the resource's
// message (unknown fields and wrong types are errors).
func (d *document) check() ([]byte, error) {
	b, err := json.Marshal(d.fields)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.where, err)
	}
	if err := protojson.Unmarshal(b, d.r.newItem()); err != nil {
		return nil, fmt.Errorf("%s: %s", d.where, protoErrorText(err))
	}
	return b, nil
}

var protoErrorPrefix = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)

// protoErrorText is a protojson error without its prefix and its position
// in the JSON the file became.
func protoErrorText(err error) string {
	return protoErrorPrefix.ReplaceAllString(strings.ReplaceAll(err.Error(), "\u00a0", " "), "")
}

// resolveRefs replaces names given in r's reference fields with ids.
func (d *document) resolveRefs(ctx context.Context, s *session, r *resource) error {
	for f, ref := range r.refs {
		v, ok := d.fields[f].(string)
		if !ok || v == "" || isID(v) {
			continue
		}
		it, err := s.byName(ctx, ref, v)
		if err != nil {
			return err
		}
		if it == nil {
			return fmt.Errorf("%s: %s: no %s named %q", d.where, f, ref.singular, v)
		}
		d.fields[f] = stringField(it, "id")
	}
	return nil
}

// messageFields converts a YAML mapping into the JSON object of a message
// md, field by field: a string field keeps the text as written (so mode:
// 0644 stays "0644"), a nested message is converted the same way.
func messageFields(n *yaml.Node, md protoreflect.MessageDescriptor, at string) (map[string]any, error) {
	n = unalias(n)
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: must be a mapping of fields (line %d)", cmpPath(at, md), n.Line)
	}
	out := map[string]any{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i].Value, n.Content[i+1]
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		if fd == nil {
			return nil, fmt.Errorf("%s: unknown field (line %d)", joinPath(at, key), n.Content[i].Line)
		}
		if behaves(fd, annotations.FieldBehavior_OUTPUT_ONLY) {
			continue // set by the server; an echo of `get` is fine
		}
		v, err := fieldValue(val, fd, joinPath(at, fd.JSONName()))
		if err != nil {
			return nil, err
		}
		if v == "" && behaves(fd, annotations.FieldBehavior_INPUT_ONLY) {
			continue // a write-only field left empty: keep what is stored
		}
		out[fd.JSONName()] = v
	}
	return out, nil
}

func fieldValue(n *yaml.Node, fd protoreflect.FieldDescriptor, at string) (any, error) {
	n = unalias(n)
	switch {
	case n.Tag == "!!null":
		return nil, nil
	case fd.IsMap() && n.Kind == yaml.MappingNode:
		out := map[string]any{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			v, err := elemValue(n.Content[i+1], fd.MapValue(), at+"."+k)
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, nil
	case fd.IsList() && n.Kind == yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for i, c := range n.Content {
			v, err := elemValue(c, fd, fmt.Sprintf("%s[%d]", at, i))
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return elemValue(n, fd, at)
}

func elemValue(n *yaml.Node, fd protoreflect.FieldDescriptor, at string) (any, error) {
	n = unalias(n)
	switch {
	case fd.Kind() == protoreflect.MessageKind && n.Kind == yaml.MappingNode &&
		!strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf."):
		return messageFields(n, fd.Message(), at)
	case fd.Kind() == protoreflect.StringKind && n.Kind == yaml.ScalarNode && n.Tag != "!!null":
		return n.Value, nil
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s: %w", at, err)
	}
	return v, nil
}

func unalias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func joinPath(at, name string) string {
	if at == "" {
		return name
	}
	return at + "." + name
}

func cmpPath(at string, md protoreflect.MessageDescriptor) string {
	if at == "" {
		return "the document (a " + string(md.Name()) + ")"
	}
	return at
}

// behaves reports whether a field is annotated with the behaviour b.
func behaves(fd protoreflect.FieldDescriptor, b annotations.FieldBehavior) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	bs, _ := proto.GetExtension(opts, annotations.E_FieldBehavior).([]annotations.FieldBehavior)
	return slices.Contains(bs, b)
}
