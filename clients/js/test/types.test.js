// index.d.ts against the JSON Schemas: every interface tagged `@schema FILE[#POINTER]` has exactly the schema's
// fields (same names; optional exactly where the schema does not require them), and every message/body schema of
// schema/v1/ has an interface. Run by `node --test` (tests/test_js_client.py runs it from pytest); reads the schema
// files from SENDRETURN_SCHEMA_DIR, default ../../schema/v1 beside this package in the repository.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const schemaDir = process.env.SENDRETURN_SCHEMA_DIR || path.join(here, "..", "..", "..", "schema", "v1");
const dts = readFileSync(path.join(here, "..", "index.d.ts"), "utf8");
const UNIONS = new Set(["common.json", "server-message.json", "client-message.json"]);

function load(file) {
  return JSON.parse(readFileSync(path.join(schemaDir, file), "utf8"));
}

function resolve(ref) {
  const [file, pointer = ""] = ref.split("#");
  let node = load(file);
  for (const part of pointer.split("/").filter(Boolean)) node = node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
  if (node && node.$ref && !node.properties) return resolve(node.$ref.startsWith("#") ? file + node.$ref : node.$ref);
  return node;
}

/** {tag, name, fields: Map(field -> optional)} for every tagged interface in index.d.ts. */
function interfaces() {
  const out = [];
  const re = /\/\*\*\s*@schema\s+(\S+)\s*\*\/\s*export interface (\w+)\s*\{([\s\S]*?)\n\}/g;
  for (const m of dts.matchAll(re)) {
    const body = m[3].replace(/\/\*\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
    const fields = new Map();
    let depth = 0;
    for (const line of body.split("\n")) {
      const f = depth === 0 && /^\s*(\w+)(\??):/.exec(line);
      if (f) fields.set(f[1], f[2] === "?");
      depth += (line.match(/\{/g) || []).length - (line.match(/\}/g) || []).length;
    }
    out.push({ tag: m[1], name: m[2], fields });
  }
  return out;
}

test("every tagged interface has exactly its schema's fields", () => {
  const found = interfaces();
  assert.ok(found.length >= 15, `only ${found.length} tagged interfaces found`);
  for (const { tag, name, fields } of found) {
    const schema = resolve(tag);
    assert.ok(schema && schema.properties, `${name}: ${tag} is not an object schema`);
    const required = new Set(schema.required || []);
    const expected = new Map(Object.keys(schema.properties).map((k) => [k, !required.has(k)]));
    assert.deepEqual(fields, expected, `${name} (${tag}): fields and optionality differ from the schema`);
  }
});

test("every message and body schema has an interface", () => {
  const tagged = new Set(interfaces().map((i) => i.tag));
  for (const file of readdirSync(schemaDir).filter((f) => f.endsWith(".json") && !UNIONS.has(f))) {
    assert.ok(tagged.has(file), `index.d.ts has no interface tagged @schema ${file}`);
  }
});

test("the unions list exactly the message interfaces", () => {
  const byTag = new Map(interfaces().map((i) => [i.tag, i.name]));
  for (const [union, typeName] of [["server-message.json", "ServerMessage"], ["client-message.json", "ClientMessage"]]) {
    const expected = load(union).oneOf.map((r) => byTag.get(r.$ref)).sort();
    const m = new RegExp(`export type ${typeName} = ([^;]+);`).exec(dts);
    assert.ok(m, `no ${typeName} in index.d.ts`);
    assert.deepEqual(m[1].split("|").map((s) => s.trim()).sort(), expected, typeName);
  }
});

test("literal unions match the schema enums", () => {
  const common = load("common.json").$defs;
  const literals = (name) => {
    const m = new RegExp(`export type ${name} =([^;]+);`).exec(dts);
    return m[1].split("|").map((s) => s.trim().replace(/"/g, "")).filter(Boolean).sort();
  };
  assert.deepEqual(literals("ErrorCode"), [...common.errorCode.enum].sort());
  assert.deepEqual(literals("HttpErrorCode"), [...common.httpErrorCode.enum].sort());
  assert.deepEqual(literals("Encoding"), [...common.encoding.enum].sort());
  assert.deepEqual(literals("Role"), [...common.role.enum].sort());
});
