// Validates Prometheus Operator resources (a JSON array on stdin) with the
// schemas of @kubernetes-models/prometheus-operator, whose node_modules
// directory is the first argument. Prints each problem; exits 1 if any.
import { readFileSync } from "node:fs";
import { join } from "node:path";

const modules = process.argv[2];
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const doc of docs) {
  const [group, version] = doc.apiVersion.split("/");
  const file = join(modules, "@kubernetes-models/prometheus-operator", group, version, `${doc.kind}.js`);
  const { [doc.kind]: Model } = await import(file);
  try {
    new Model(doc).validate();
    console.log(`ok ${doc.kind} ${doc.metadata.name}`);
  } catch (e) {
    failed++;
    console.log(`invalid ${doc.kind} ${doc.metadata.name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
