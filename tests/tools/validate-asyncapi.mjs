// Validates an AsyncAPI document with the AsyncAPI parser (the one the
// AsyncAPI tools use): `node tests/tools/validate-asyncapi.mjs FILE`.
// Prints every diagnostic of severity error (and, for information, the
// warnings) and exits non-zero when there is an error or the file cannot be
// parsed at all. Install first: `npm ci --prefix tests/tools`.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate-asyncapi.mjs FILE');
  process.exit(2);
}

const text = await readFile(file, 'utf8');
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: file });

const where = (d) => (d.path && d.path.length ? d.path.join('/') : '(document)');
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning);
for (const d of warnings) {
  console.error(`warning ${d.code} at ${where(d)}: ${d.message}`);
}
for (const d of errors) {
  console.error(`error ${d.code} at ${where(d)}: ${d.message}`);
}
if (errors.length > 0 || !document) {
  console.error(`${file}: not a valid AsyncAPI document (${errors.length} errors)`);
  process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()} (${warnings.length} warnings)`);
