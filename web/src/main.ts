// The page nst-server serves at / with --http-port: pick a photo and paintings, stream one Stylize call over the
// Connect protocol, show its events as they come, cancel it, download the result. Bundled into
// server/nst_server/transport/page/nst.js by protos/generate.sh; the messages come from the .proto (src/gen, protoc-gen-es).
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import {
  ColourPreservation,
  type DescribeModelResponse,
  ImageFormat,
  Optimizer,
  StopReason,
  StyleTransferService,
  type StylizeRequest,
} from "./gen/nst/v1/style_transfer_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { StylizeRequestSchema } from "./gen/nst/v1/style_transfer_pb.js";

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`the page has no #${id}`);
  return found as T;
}

const ui = {
  model: element<HTMLParagraphElement>("model"),
  form: element<HTMLFormElement>("job"),
  tokenSection: element<HTMLElement>("token-section"),
  token: element<HTMLInputElement>("token"),
  content: element<HTMLInputElement>("content"),
  contentDrop: element<HTMLLabelElement>("content-drop"),
  contentChosen: element<HTMLDivElement>("content-chosen"),
  styles: element<HTMLInputElement>("styles"),
  styleDrop: element<HTMLLabelElement>("style-drop"),
  stylesChosen: element<HTMLDivElement>("styles-chosen"),
  size: element<HTMLInputElement>("size"),
  budget: element<HTMLInputElement>("budget"),
  optimizer: element<HTMLSelectElement>("optimizer"),
  preview: element<HTMLInputElement>("preview"),
  colour: element<HTMLSelectElement>("colour"),
  seed: element<HTMLInputElement>("seed"),
  stylize: element<HTMLButtonElement>("stylize"),
  cancel: element<HTMLButtonElement>("cancel"),
  picture: element<HTMLImageElement>("picture"),
  placeholder: element<HTMLParagraphElement>("placeholder"),
  progress: element<HTMLProgressElement>("progress"),
  status: element<HTMLParagraphElement>("status"),
  losses: element<HTMLParagraphElement>("losses"),
  error: element<HTMLParagraphElement>("error"),
  download: element<HTMLButtonElement>("download"),
};

const OPTIMIZERS: Record<string, Optimizer> = { lbfgs: Optimizer.LBFGS, adam: Optimizer.ADAM };
const COLOURS: Record<string, ColourPreservation> = {
  none: ColourPreservation.NONE,
  luminance: ColourPreservation.LUMINANCE,
  histogram: ColourPreservation.HISTOGRAM,
};
const MIME: Record<number, string> = {
  [ImageFormat.PNG]: "image/png",
  [ImageFormat.JPEG]: "image/jpeg",
  [ImageFormat.WEBP]: "image/webp",
};

// The token, when the server asks for one, travels as the same header the gRPC port reads as metadata.
const withToken: Interceptor = (next) => async (request) => {
  const token = ui.token.value.trim();
  if (token !== "") request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};
const client = createClient(
  StyleTransferService,
  createConnectTransport({ baseUrl: window.location.origin, useBinaryFormat: true, interceptors: [withToken] }),
);

let content: File | null = null;
let styles: File[] = [];
let running: AbortController | null = null;
let result: { bytes: Uint8Array; mime: string; name: string } | null = null;
let shownUrl: string | null = null;
let connected = false; // DescribeModel answered: the token, if the server wants one, is right

function say(text: string): void {
  ui.status.textContent = text;
}

function showError(error: unknown): void {
  // The server's own message (ConnectError.rawMessage), with the status it came with.
  const text =
    error instanceof ConnectError
      ? `${Code[error.code].replace(/([a-z])([A-Z])/g, "$1 $2")}: ${error.rawMessage}`
      : String(error);
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError(): void {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function show(bytes: Uint8Array, mime: string, kind: "preview" | "result", alt: string): void {
  const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: mime }));
  ui.picture.src = url;
  ui.picture.alt = alt;
  ui.picture.dataset.kind = kind;
  ui.picture.hidden = false;
  ui.placeholder.hidden = true;
  if (shownUrl !== null) URL.revokeObjectURL(shownUrl);
  shownUrl = url;
}

function thumbnails(target: HTMLElement, files: File[]): void {
  target.replaceChildren(
    ...files.map((file) => {
      const image = document.createElement("img");
      image.src = URL.createObjectURL(file);
      image.alt = file.name;
      image.title = file.name;
      return image;
    }),
  );
}

function images(list: FileList | null): File[] {
  return Array.from(list ?? []);
}

function acceptDrops(zone: HTMLElement, take: (files: File[]) => void): void {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(images(event.dataTransfer?.files ?? null));
  });
}

function takeContent(files: File[]): void {
  content = files[0] ?? null;
  thumbnails(ui.contentChosen, content === null ? [] : [content]);
}

function takeStyles(files: File[]): void {
  styles = files;
  thumbnails(ui.stylesChosen, styles);
}

function describeModel(answer: DescribeModelResponse): void {
  const model = answer.models[0];
  if (model === undefined) {
    ui.model.textContent = "the server has no model";
    return;
  }
  ui.model.textContent = `Model ${model.name} · ${model.weights} · ${model.device}`;
  const limits = answer.limits;
  if (limits !== undefined && limits.maxEvaluations > 0) ui.budget.max = String(limits.maxEvaluations);
}

async function connect(): Promise<void> {
  try {
    describeModel(await client.describeModel({}));
    connected = true;
    ui.tokenSection.hidden = true;
    clearError();
  } catch (error) {
    connected = false;
    if (error instanceof ConnectError && error.code === Code.Unauthenticated) {
      ui.tokenSection.hidden = false;
      ui.model.textContent = "this server needs an access token";
      if (ui.token.value.trim() !== "") showError(error);
      ui.token.focus();
      return;
    }
    ui.model.textContent = "cannot reach the server";
    showError(error);
  }
}

function number(input: HTMLInputElement): number {
  const value = Number(input.value);
  return Number.isFinite(value) && value >= 0 ? Math.floor(value) : 0;
}

async function request(): Promise<MessageInitShape<typeof StylizeRequestSchema>> {
  if (content === null) throw new Error("Choose a photo first.");
  if (styles.length === 0) throw new Error("Choose at least one painting.");
  const bytes = async (file: File): Promise<Uint8Array> => new Uint8Array(await file.arrayBuffer());
  return {
    contentImage: await bytes(content),
    styleImages: await Promise.all(styles.map(async (file) => ({ image: await bytes(file) }))),
    options: {
      maxSidePx: number(ui.size),
      maxEvaluations: number(ui.budget),
      optimizer: OPTIMIZERS[ui.optimizer.value] ?? Optimizer.UNSPECIFIED,
      previewEvery: number(ui.preview),
      colourPreservation: COLOURS[ui.colour.value] ?? ColourPreservation.UNSPECIFIED,
      seed: BigInt(number(ui.seed)),
      outputFormat: ImageFormat.PNG,
    },
  };
}

function setRunning(on: boolean): void {
  ui.stylize.disabled = on;
  ui.cancel.disabled = !on;
  ui.form.setAttribute("aria-busy", String(on));
}

const fixed = (value: number): string => (Math.abs(value) >= 1e4 || Math.abs(value) < 1e-2 ? value.toExponential(3) : value.toFixed(3));

async function stylize(): Promise<void> {
  clearError();
  let init: MessageInitShape<typeof StylizeRequestSchema>;
  try {
    init = await request();
  } catch (error) {
    showError(error);
    return;
  }
  result = null;
  ui.download.disabled = true;
  ui.progress.value = 0;
  ui.losses.textContent = "";
  const abort = new AbortController();
  running = abort;
  setRunning(true);
  say("Sending…");
  let budget = 1;
  let scale = "";
  try {
    for await (const response of client.stylize(init as StylizeRequest, { signal: abort.signal })) {
      const event = response.event;
      switch (event.case) {
        case "queued":
          say(`Queued: position ${event.value.position}`);
          break;
        case "started":
          budget = Math.max(event.value.maxEvaluations, 1);
          ui.progress.max = budget;
          say(`Started: ${event.value.width}×${event.value.height} on ${event.value.device}`);
          break;
        case "scaleStarted":
          scale = event.value.scales > 1 ? `Scale ${event.value.scale} of ${event.value.scales} · ` : "";
          say(`${scale}${event.value.width}×${event.value.height}`);
          break;
        case "progress": {
          const p = event.value;
          ui.progress.value = Math.min(p.evaluations, budget);
          say(`${scale}Iteration ${p.iteration} · ${p.evaluations} of ${budget} evaluations · ${p.elapsedS.toFixed(1)} s`);
          const l = p.losses;
          if (l !== undefined)
            ui.losses.textContent = `loss ${fixed(l.total)} = content ${fixed(l.content)} + style ${fixed(l.style)} + tv ${fixed(l.tv)}`;
          break;
        }
        case "preview":
          show(event.value.image, MIME[event.value.format] ?? "image/png", "preview", `Preview after iteration ${event.value.iteration}`);
          break;
        case "result": {
          const r = event.value;
          const mime = MIME[r.format] ?? "image/png";
          result = { bytes: r.image, mime, name: `stylized-${ui.seed.value || 0}.${mime.split("/")[1]}` };
          show(r.image, mime, "result", `Result, ${r.width} by ${r.height} pixels`);
          ui.progress.value = ui.progress.max;
          const why = r.stopReason === StopReason.CONVERGED ? "converged" : "budget spent";
          const seconds = r.timings?.totalS ?? 0;
          say(`Done: ${r.width}×${r.height}, ${r.iterations} iterations, ${r.evaluations} evaluations in ${seconds.toFixed(1)} s (${why})`);
          ui.download.disabled = false;
          break;
        }
        default:
          break;
      }
    }
  } catch (error) {
    if (abort.signal.aborted || (error instanceof ConnectError && error.code === Code.Canceled)) {
      say("Job cancelled.");
    } else {
      say("Failed.");
      showError(error);
      if (error instanceof ConnectError && error.code === Code.Unauthenticated) ui.tokenSection.hidden = false;
    }
  } finally {
    running = null;
    setRunning(false);
  }
}

function download(): void {
  if (result === null) return;
  // The result's bytes exactly as the server sent them: no canvas, no re-encoding.
  const url = URL.createObjectURL(new Blob([result.bytes as BlobPart], { type: result.mime }));
  const link = document.createElement("a");
  link.href = url;
  link.download = result.name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

ui.content.addEventListener("change", () => takeContent(images(ui.content.files)));
ui.styles.addEventListener("change", () => takeStyles(images(ui.styles.files)));
acceptDrops(ui.contentDrop, takeContent);
acceptDrops(ui.styleDrop, takeStyles);
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  // Enter in the token field submits the form: the first submit connects, the next ones paint.
  void (connected ? stylize() : connect());
});
ui.cancel.addEventListener("click", () => {
  say("Cancelling…");
  running?.abort();
});
ui.download.addEventListener("click", download);
ui.token.addEventListener("change", () => {
  if (!connected) void connect();
});
void connect();
