package main

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
)

// schema is the vim25 data model as govmomi's vim25/types declares it (that
// package is generated from VMware's WSDL): read from its Go source with
// go/ast, it gives back a WSDL that suds can build a client from. The
// simulator serves no WSDL, and oslo.vmware fetches one from the vCenter
// (https://vc/sdk/vimService.wsdl) before its first call.
type schema struct {
	structs map[string]*structDef // every Go struct: a complexType
	enums   map[string]bool       // `type X string`: a string simpleType
	methods map[string]string     // method element -> its request type (CreateVM_Task -> CreateVMRequestType)
	faults  map[string]string     // fault element -> its type (InvalidArgumentFault -> InvalidArgument)
}

type structDef struct {
	base   string // the embedded struct: xsd:extension base
	fields []fieldDef
}

type fieldDef struct {
	name   string // XML element or attribute name
	goType ast.Expr
	attr   bool
}

// loadSchema parses vim25/types of the govmomi source tree dir ("": the
// module of the build, found with `go list -m` or in the module cache).
func loadSchema(dir string) (*schema, error) {
	if dir == "" {
		var err error
		if dir, err = govmomiSource(); err != nil {
			return nil, err
		}
	}
	s := &schema{structs: map[string]*structDef{}, enums: map[string]bool{}, methods: map[string]string{}, faults: map[string]string{}}
	aliases := map[string]string{}
	fset := token.NewFileSet()
	for _, name := range []string{"types.go", "enum.go", "unreleased.go"} {
		path := filepath.Join(dir, "vim25", "types", name)
		if _, err := os.Stat(path); err != nil && name == "unreleased.go" {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			g, ok := decl.(*ast.GenDecl)
			if !ok || g.Tok != token.TYPE {
				continue
			}
			for _, spec := range g.Specs {
				ts := spec.(*ast.TypeSpec)
				switch t := ts.Type.(type) {
				case *ast.StructType:
					s.structs[ts.Name.Name] = structOf(t)
				case *ast.Ident:
					if t.Name == "string" {
						s.enums[ts.Name.Name] = true
					} else {
						aliases[ts.Name.Name] = t.Name
					}
				}
			}
		}
	}
	if len(s.structs) < 1000 {
		return nil, fmt.Errorf("%s/vim25/types: only %d structs", dir, len(s.structs))
	}
	for name, target := range aliases {
		switch {
		case strings.HasSuffix(target, "RequestType") && s.structs[target] != nil && s.structs[name+"Response"] != nil:
			s.methods[name] = target
		case strings.HasSuffix(name, "Fault"):
			t := strings.TrimPrefix(target, "Base")
			if s.structs[t] != nil && (t == strings.TrimSuffix(name, "Fault")) {
				s.faults[name] = t
			}
		}
	}
	return s, nil
}

func structOf(t *ast.StructType) *structDef {
	d := &structDef{}
	for _, f := range t.Fields.List {
		if len(f.Names) == 0 {
			if id, ok := f.Type.(*ast.Ident); ok {
				d.base = id.Name
			}
			continue
		}
		if f.Tag == nil {
			continue
		}
		tag, err := strconv.Unquote(f.Tag.Value)
		if err != nil {
			continue
		}
		parts := strings.Split(reflect.StructTag(tag).Get("xml"), ",")
		if parts[0] == "" || parts[0] == "-" {
			continue
		}
		fd := fieldDef{name: parts[0], goType: f.Type}
		for _, p := range parts[1:] {
			fd.attr = fd.attr || p == "attr"
		}
		d.fields = append(d.fields, fd)
	}
	return d
}

// govmomiSource finds the govmomi module's source directory.
func govmomiSource() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/vmware/govmomi").Output()
	if dir := strings.TrimSpace(string(out)); err == nil && dir != "" {
		return dir, nil
	}
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/vmware/govmomi" {
				version = dep.Version
			}
		}
	}
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil || version == "" {
		return "", errors.New("cannot locate govmomi's source: pass -govmomi DIR")
	}
	dir := filepath.Join(strings.TrimSpace(string(cache)), "github.com", "vmware", "govmomi@"+version)
	if _, err := os.Stat(filepath.Join(dir, "vim25", "types", "types.go")); err != nil {
		return "", fmt.Errorf("govmomi %s not in the module cache (go mod download github.com/vmware/govmomi): %w", version, err)
	}
	return dir, nil
}

var primitives = map[string]string{
	"string": "xsd:string", "bool": "xsd:boolean", "int8": "xsd:byte", "byte": "xsd:byte",
	"uint8": "xsd:unsignedByte", "int16": "xsd:short", "int32": "xsd:int", "int64": "xsd:long",
	"int": "xsd:int", "float32": "xsd:float", "float64": "xsd:double",
	"AnyType": "xsd:anyType", "ByteSlice": "xsd:base64Binary",
}

// xsdType maps a Go field type to an XML Schema type and whether the field
// repeats.
func (s *schema) xsdType(e ast.Expr) (string, bool) {
	switch t := e.(type) {
	case *ast.StarExpr:
		return s.xsdType(t.X)
	case *ast.ArrayType:
		if id, ok := t.Elt.(*ast.Ident); ok && id.Name == "byte" {
			return "xsd:base64Binary", false
		}
		x, _ := s.xsdType(t.Elt)
		return x, true
	case *ast.SelectorExpr:
		if id, ok := t.X.(*ast.Ident); ok && id.Name == "time" && t.Sel.Name == "Time" {
			return "xsd:dateTime", false
		}
	case *ast.Ident:
		if p, ok := primitives[t.Name]; ok {
			return p, false
		}
		name := t.Name
		if s.structs[name] == nil && strings.HasPrefix(name, "Base") && s.structs[name[4:]] != nil {
			name = name[4:]
		}
		if s.structs[name] != nil || s.enums[name] {
			return "vim25:" + name, false
		}
	}
	return "xsd:anyType", false
}

// integerElements are the element names that are integers in some vim25
// type and never a string (or of any type) in another: the middleware may
// turn "1024.0" into "1024" there (which changes nothing for a double, and
// nothing valid for a boolean).
func (s *schema) integerElements() map[string]bool {
	ints, others := map[string]bool{}, map[string]bool{}
	for _, d := range s.structs {
		for _, f := range d.fields {
			switch x, _ := s.xsdType(f.goType); {
			case x == "xsd:int" || x == "xsd:long" || x == "xsd:short" || x == "xsd:byte" || x == "xsd:unsignedByte":
				ints[f.name] = true
			case x == "xsd:string" || x == "xsd:anyType" || s.enums[strings.TrimPrefix(x, "vim25:")]:
				others[f.name] = true
			}
		}
	}
	for n := range others {
		delete(ints, n)
	}
	return ints
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WSDL renders a single-file document/literal WSDL of the vim25 API:
// complexTypes (a struct embedding another extends it), string enums, one
// request and one response element, message and operation per method, and
// the fault elements. Every element is optional: suds does not enforce
// occurrence, and the simulator checks requests itself.
func (s *schema) WSDL() []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!-- vim25 WSDL generated by integration/pyvmware from govmomi's vim25/types (not VMware's file) -->
<definitions targetNamespace="urn:vim25" xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:vim25="urn:vim25" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
<types>
<schema targetNamespace="urn:vim25" xmlns="http://www.w3.org/2001/XMLSchema" xmlns:vim25="urn:vim25" xmlns:xsd="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
`)
	for _, name := range sortedKeys(s.structs) {
		d := s.structs[name]
		if name == "ManagedObjectReference" {
			b.WriteString(`<complexType name="ManagedObjectReference"><simpleContent><extension base="xsd:string">` +
				`<attribute name="type" type="xsd:string"/><attribute name="serverGuid" type="xsd:string"/>` +
				"</extension></simpleContent></complexType>\n")
			continue
		}
		var seq, attrs strings.Builder
		for _, f := range d.fields {
			x, list := s.xsdType(f.goType)
			if f.attr {
				fmt.Fprintf(&attrs, `<attribute name="%s" type="%s"/>`, f.name, x)
				continue
			}
			occurs := ""
			if list {
				occurs = ` maxOccurs="unbounded"`
			}
			fmt.Fprintf(&seq, `<element name="%s" type="%s" minOccurs="0"%s/>`, f.name, x, occurs)
		}
		fmt.Fprintf(&b, `<complexType name="%s">`, name)
		if d.base != "" && s.structs[d.base] != nil {
			fmt.Fprintf(&b, `<complexContent><extension base="vim25:%s"><sequence>%s</sequence>%s</extension></complexContent>`, d.base, seq.String(), attrs.String())
		} else {
			fmt.Fprintf(&b, `<sequence>%s</sequence>%s`, seq.String(), attrs.String())
		}
		b.WriteString("</complexType>\n")
	}
	for _, name := range sortedKeys(s.enums) {
		fmt.Fprintf(&b, "<simpleType name=\"%s\"><restriction base=\"xsd:string\"/></simpleType>\n", name)
	}
	methods := sortedKeys(s.methods)
	for _, m := range methods {
		fmt.Fprintf(&b, "<element name=\"%s\" type=\"vim25:%s\"/><element name=\"%sResponse\" type=\"vim25:%sResponse\"/>\n", m, s.methods[m], m, m)
	}
	for _, f := range sortedKeys(s.faults) {
		fmt.Fprintf(&b, "<element name=\"%s\" type=\"vim25:%s\"/>\n", f, s.faults[f])
	}
	b.WriteString("</schema>\n</types>\n")
	for _, m := range methods {
		fmt.Fprintf(&b, "<message name=\"%sRequestMsg\"><part name=\"parameters\" element=\"vim25:%s\"/></message>"+
			"<message name=\"%sResponseMsg\"><part name=\"parameters\" element=\"vim25:%sResponse\"/></message>\n", m, m, m, m)
	}
	b.WriteString("<portType name=\"VimPortType\">\n")
	for _, m := range methods {
		fmt.Fprintf(&b, "<operation name=\"%s\"><input message=\"vim25:%sRequestMsg\"/><output message=\"vim25:%sResponseMsg\"/></operation>\n", m, m, m)
	}
	b.WriteString("</portType>\n<binding name=\"VimBinding\" type=\"vim25:VimPortType\"><soap:binding style=\"document\" transport=\"http://schemas.xmlsoap.org/soap/http\"/>\n")
	for _, m := range methods {
		fmt.Fprintf(&b, "<operation name=\"%s\"><soap:operation soapAction=\"urn:vim25/8.0\"/><input><soap:body use=\"literal\"/></input><output><soap:body use=\"literal\"/></output></operation>\n", m)
	}
	b.WriteString("</binding>\n<service name=\"VimService\"><port name=\"VimPort\" binding=\"vim25:VimBinding\"><soap:address location=\"https://localhost/sdk\"/></port></service>\n</definitions>\n")
	return b.Bytes()
}
