package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Output formats.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// format is the output format asked for with -o, by default a table on a
// terminal and JSON otherwise (for scripts).
func (o *clientOptions) format(w io.Writer) (string, error) {
	switch o.output {
	case "":
		if isTerminal(w) {
			return formatTable, nil
		}
		return formatJSON, nil
	case formatTable, formatJSON, formatYAML:
		return o.output, nil
	}
	return "", fmt.Errorf("--output: %q is not table, json or yaml", o.output)
}

// checkOutput checks -o when given, for a command whose output without it
// is its own (a line, a token) whatever the terminal.
func (o *clientOptions) checkOutput(w io.Writer) error {
	if o.output == "" {
		return nil
	}
	_, err := o.format(w)
	return err
}

// writeMessage writes m as JSON named as the API names it (every field,
// as the API answers), or as YAML (only the fields set, ready to edit and
// apply).
func writeMessage(w io.Writer, format string, m proto.Message) error {
	if format == formatYAML {
		b, err := protojson.Marshal(m)
		if err != nil {
			return err
		}
		return writeYAML(w, b)
	}
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	return writeJSON(w, b)
}

// writeJSONLine writes m as one line of JSON (a followed stream's item).
func writeJSONLine(w io.Writer, m proto.Message) {
	var b bytes.Buffer
	raw, _ := protojson.Marshal(m)
	_ = json.Compact(&b, raw) // protojson varies its spacing
	b.WriteByte('\n')
	_, _ = w.Write(b.Bytes())
}

// writeJSON writes a JSON document indented, the same way each time
// (protojson varies its spacing on purpose).
func writeJSON(w io.Writer, doc []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, doc, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// writeYAML writes a JSON document as block-style YAML, keeping the order
// of its fields.
func writeYAML(w io.Writer, jsonDoc []byte) error {
	var n yaml.Node
	if err := yaml.Unmarshal(jsonDoc, &n); err != nil {
		return err
	}
	var plain func(*yaml.Node)
	plain = func(n *yaml.Node) {
		n.Style = 0
		for _, c := range n.Content {
			plain(c)
		}
	}
	plain(&n)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	return enc.Close()
}

// writeTable writes rows (the first is the header) as aligned columns.
func writeTable(w io.Writer, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
