// Runs firmware modules under MicroPython's WebAssembly port in Node.
//   node run_micropython.mjs PORT_DIR FIRMWARE_DIR CODE [FILE...]
// PORT_DIR holds node_modules/@micropython/micropython-webassembly-pyscript; each FILE
// (relative to FIRMWARE_DIR) is copied flat into /fw, which goes first on sys.path, then
// CODE runs. A Python exception fails the run (exit 1) with its traceback on stdout.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [portDir, firmwareDir, code, ...files] = process.argv.slice(2);
const entry = join(portDir, "node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs");
const { loadMicroPython } = await import(pathToFileURL(entry).href);
const mp = await loadMicroPython({ stdout: (line) => process.stdout.write(line + "\n") });
mp.FS.mkdir("/fw");
for (const file of files) {
  mp.FS.writeFile("/fw/" + file.split("/").pop(), readFileSync(join(firmwareDir, file)));
}
try {
  mp.runPython("import sys\nsys.path.insert(0, '/fw')\n" + code);
} catch (err) {
  process.stdout.write(String(err.message ?? err) + "\n");
  process.exit(1);
}
