package openapi

import (
	"encoding/json"
	"testing"
)

func TestJSONIsSwagger2(t *testing.T) {
	var doc struct {
		Swagger string         `json:"swagger"`
		Paths   map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(JSON(), &doc); err != nil {
		t.Fatalf("embedded document is not valid JSON: %v", err)
	}
	if doc.Swagger != "2.0" {
		t.Fatalf("swagger = %q, want 2.0", doc.Swagger)
	}
	if doc.Paths == nil {
		t.Fatal("document has no paths object")
	}
}

func TestJSONReturnsCopy(t *testing.T) {
	a := JSON()
	a[0] = 'x'
	if b := JSON(); b[0] == 'x' {
		t.Fatal("JSON returned shared memory")
	}
}
