#!/usr/bin/env node
// A caller of nst.v1.StyleTransferService in another language, built from the .proto alone (no generated
// code): @grpc/proto-loader reads protos/nst/v1/style_transfer.proto at run time and @grpc/grpc-js speaks to
// the server. It streams one Stylize call and checks the events and the image, asks DescribeModel, and checks
// that a bad request is refused with INVALID_ARGUMENT. tests/interop/test_node_client.py runs it against a
// real nst-server and compares the image with the Python client's for the same request.
//
//   node tests/interop/stylize.js ADDRESS CONTENT.png STYLE.png OUT.png [SIDE_PX] [EVALUATIONS] [SEED]
//
// Prints one JSON line (what it saw) and exits 0 only when every check passed; otherwise prints the failures
// to stderr and exits 1.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function loadService() {
  const definition = protoLoader.loadSync("nst/v1/style_transfer.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // the .proto's own field names: max_side_px, not maxSidePx
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true, // StylizeResponse.event names the event that is set
  });
  return grpc.loadPackageDefinition(definition).nst.v1.StyleTransferService;
}

function pngSize(bytes) {
  if (bytes.length < 24 || !bytes.subarray(0, 8).equals(PNG_SIGNATURE)) return null;
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

function stylize(client, request, deadlineSeconds) {
  return new Promise((resolve) => {
    const events = [];
    const call = client.Stylize(request, { deadline: Date.now() + deadlineSeconds * 1000 });
    call.on("data", (response) => events.push(response));
    call.on("error", (error) => resolve({ events, error }));
    call.on("end", () => resolve({ events, error: null }));
  });
}

function unary(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + 30000 }, (error, response) => resolve({ error, response }));
  });
}

async function main() {
  const [address, contentPath, stylePath, outPath, side = "48", evaluations = "6", seed = "1"] =
    process.argv.slice(2);
  if (!outPath) {
    process.stderr.write("usage: stylize.js ADDRESS CONTENT STYLE OUT [SIDE_PX] [EVALUATIONS] [SEED]\n");
    process.exit(2);
  }
  const failures = [];
  const check = (ok, what) => {
    if (!ok) failures.push(what);
  };
  const Service = loadService();
  const client = new Service(address, grpc.credentials.createInsecure());
  const maxSide = Number(side);
  const maxEvaluations = Number(evaluations);

  const described = await unary(client, "DescribeModel", {});
  check(described.error === null, `DescribeModel failed: ${described.error && described.error.message}`);
  const models = described.response ? described.response.models.map((m) => m.name) : [];
  check(models.length > 0, "DescribeModel listed no model");

  const request = {
    content_image: fs.readFileSync(contentPath),
    style_images: [{ image: fs.readFileSync(stylePath) }],
    options: {
      max_side_px: maxSide,
      max_evaluations: maxEvaluations,
      seed: seed,
      preview_every: 2,
      output_format: "IMAGE_FORMAT_PNG",
    },
  };
  const { events, error } = await stylize(client, request, 300);
  check(error === null, `Stylize failed: ${error && `${grpc.status[error.code]}: ${error.details}`}`);
  const kinds = events.map((e) => e.event);
  const first = kinds.findIndex((k) => k !== "queued");
  check(first >= 0 && kinds[first] === "started", `the first event after queued is not started: ${kinds.slice(0, 3)}`);
  check(kinds.filter((k) => k === "result").length === 1 && kinds[kinds.length - 1] === "result",
    `result is not the one last event: ${kinds.slice(-3)}`);
  check(kinds.includes("scale_started"), "no scale_started event");
  const progress = events.filter((e) => e.event === "progress").map((e) => e.progress);
  check(progress.length > 0, "no progress event");
  check(progress.every((p, i) => p.iteration === i + 1), "progress iterations are not 1, 2, 3, ...");
  check(progress.every((p, i) => i === 0 || p.evaluations >= progress[i - 1].evaluations),
    "evaluations went down between progress events");
  check(progress.every((p) => Number.isFinite(p.losses.total) && p.losses.total > 0), "a progress loss is not finite");
  const previews = events.filter((e) => e.event === "preview").map((e) => e.preview);
  check(previews.length > 0 && previews.every((p) => p.iteration % 2 === 0 && pngSize(p.image) !== null),
    "previews every 2 iterations, as PNG, were not sent");

  const started = events.find((e) => e.event === "started");
  const result = events.length ? events[events.length - 1].result : undefined;
  let summary = { models, events: kinds.length };
  if (started && result) {
    const size = pngSize(result.image);
    check(size !== null, "the result is not a PNG");
    check(result.format === "IMAGE_FORMAT_PNG", `result format ${result.format}`);
    check(size && size.width === result.width && size.height === result.height,
      `the PNG is ${size && `${size.width}x${size.height}`}, the result says ${result.width}x${result.height}`);
    check(Math.max(result.width, result.height) === maxSide, `longest side ${Math.max(result.width, result.height)}`);
    check(result.width === started.started.width && result.height === started.started.height,
      "the result's size is not the size started announced");
    check(result.evaluations > 0 && result.evaluations <= maxEvaluations,
      `evaluations ${result.evaluations} outside 1..${maxEvaluations}`);
    check(result.iterations === progress.length, "iterations differ from the number of progress events");
    check(Number.isFinite(result.losses.total), "the final loss is not finite");
    fs.writeFileSync(outPath, result.image);
    summary = {
      ...summary,
      job_id: started.started.job_id,
      device: started.started.device,
      width: result.width,
      height: result.height,
      iterations: result.iterations,
      evaluations: result.evaluations,
      previews: previews.length,
      loss: result.losses.total,
    };
  }

  // A request the server must refuse: the status code and message arrive intact through another gRPC stack.
  const bad = await stylize(client, { ...request, options: { max_side_px: 100000 } }, 30);
  check(bad.error && bad.error.code === grpc.status.INVALID_ARGUMENT,
    `max_side_px 100000 gave ${bad.error ? grpc.status[bad.error.code] : "no error"}, not INVALID_ARGUMENT`);
  check(bad.events.every((e) => e.event !== "result"), "a refused request sent a result");
  summary.refused = bad.error ? `${grpc.status[bad.error.code]}: ${bad.error.details}` : null;

  client.close();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (failures.length) {
    process.stderr.write(`${failures.map((f) => `FAIL: ${f}`).join("\n")}\n`);
    process.exit(1);
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
