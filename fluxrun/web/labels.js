// Human text for the labels and help of the hosted service's tool pages.
//
// The pixel-art tool's inputs carry the hosted service's translation keys as their label
// and help ("numberofoutputs", "prompt-help"), as its seed page lists them and as Tool/Detail
// must answer for wire compatibility; the hosted site translates them for display, and so
// does this page. A label or help it has no text for is shown as it is.
const LABELS = {
  prompt: "Prompt",
  numberofoutputs: "Number of images",
  inferencesteps: "Inference steps",
  guidancescale: "Guidance scale",
  seed: "Seed",
  width: "Width",
  height: "Height",
};

const HELP = {
  "prompt-help": "Describe the image you want.",
  "numberofoutputs-help": "How many images to make; image i uses seed + i.",
  "inferencesteps-help": "Denoising steps: more steps can look better and take longer.",
  "guidancescale-help": "How closely the image follows the prompt.",
  "seed-help": "The same seed with the same inputs makes the same image. Empty: a random seed.",
  "width-help": "Image width in pixels.",
  "height-help": "Image height in pixels.",
};

export function labelText(item) {
  const label = String(item.label || item.id);
  return LABELS[label] || label.charAt(0).toUpperCase() + label.slice(1);
}

export function helpText(item) {
  const help = String(item.description || "");
  if (HELP[help]) return HELP[help];
  return /^[a-z0-9]+-help$/.test(help) ? "" : help; // an untranslated key says nothing to a person
}
