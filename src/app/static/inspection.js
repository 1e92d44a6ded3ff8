"use strict";
// Drawing one decision for a person: the image, its heat map over it, the outline of the map's pixels at or above a
// level, the regions' boxes and a caption; sizes follow the image, not the screen. Shared by / and /review.

// The JET colour map OpenCV's pictures use: value 0..1 -> [r, g, b].
function jet(value) {
  const channel = offset => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * value - offset))));
  return [channel(3), channel(2), channel(1)];
}

// Where the map lies in the image's pixels: the whole image, or the centre crop of a resize_crop view.
function mapRect(view, width, height) {
  if (!view || view.name !== "resize_crop") return {x: 0, y: 0, w: width, h: height};
  const [newW, newH] = width <= height ? [view.resize, Math.max(1, Math.round(height * view.resize / width))]
                                       : [Math.max(1, Math.round(width * view.resize / height)), view.resize];
  const sx = width / newW, sy = height / newH;
  return {x: Math.floor((newW - view.crop) / 2) * sx, y: Math.floor((newH - view.crop) / 2) * sy,
          w: view.crop * sx, h: view.crop * sy};
}

// image: a decoded <img>; mapImage: the normalised map's PNG (0-255 for 0-1, 0.5 the image threshold), decoded;
// decision: {label, image_score, regions, view, map_size}; level: outline the map from this normalised score.
function drawInspection(canvas, image, mapImage, decision, level) {
  const width = image.naturalWidth, height = image.naturalHeight;
  // a small image is drawn enlarged (whole factor, pixels kept) so that its caption and outlines stay legible
  const factor = Math.max(1, Math.ceil(320 / Math.max(width, height)));
  canvas.width = width * factor;
  canvas.height = height * factor;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = factor === 1;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const rect = mapRect(decision.view, width, height);
  const target = {x: rect.x * factor, y: rect.y * factor, w: rect.w * factor, h: rect.h * factor};
  const heat = document.createElement("canvas");
  heat.width = mapImage.naturalWidth;
  heat.height = mapImage.naturalHeight;
  const heatCtx = heat.getContext("2d");
  heatCtx.drawImage(mapImage, 0, 0);
  const pixels = heatCtx.getImageData(0, 0, heat.width, heat.height);
  const values = pixels.data.filter((_, i) => i % 4 === 0);
  for (let i = 0; i < values.length; i++) {
    const value = values[i] / 255;
    const [r, g, b] = jet(value);
    pixels.data.set([r, g, b, Math.round(40 + 150 * Math.min(1, value))], 4 * i);   // stronger where it scores higher
  }
  heatCtx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(heat, target.x, target.y, target.w, target.h);
  // the outline: map cells at or above the level whose neighbour is below it
  const line = Math.max(1, Math.round(canvas.height / 300));
  const cellW = target.w / heat.width, cellH = target.h / heat.height;
  const above = (x, y) => x >= 0 && y >= 0 && x < heat.width && y < heat.height &&
    values[y * heat.width + x] >= level * 255;
  ctx.fillStyle = "#ffffff";
  for (let y = 0; y < heat.height; y++) {
    for (let x = 0; x < heat.width; x++) {
      if (!above(x, y)) continue;
      const left = target.x + x * cellW, top = target.y + y * cellH;
      if (!above(x - 1, y)) ctx.fillRect(left, top, line, cellH);
      if (!above(x + 1, y)) ctx.fillRect(left + cellW - line, top, line, cellH);
      if (!above(x, y - 1)) ctx.fillRect(left, top, cellW, line);
      if (!above(x, y + 1)) ctx.fillRect(left, top + cellH - line, cellW, line);
    }
  }
  // the regions' boxes: in the image's pixels when the model has a view, else in the map's
  const boxScale = decision.view ? factor : factor * width / decision.map_size[0];
  ctx.strokeStyle = "#ff00ff";
  ctx.lineWidth = 2 * line;
  for (const region of decision.regions || []) {
    const [x, y, w, h] = region.bbox;
    ctx.strokeRect(x * boxScale, y * boxScale, w * boxScale, h * boxScale);
  }
  // the caption, fitted to the picture's width
  const colour = {NG: "#ff4040", REVIEW: "#ffb000", OK: "#40ff40"}[decision.label] || "#ffffff";
  const text = `${decision.label}  score ${decision.image_score.toFixed(3)}`;
  let size = Math.max(12, Math.round(canvas.height / 14));
  ctx.font = `bold ${size}px sans-serif`;
  const widest = ctx.measureText(text).width;
  if (widest > canvas.width - 12) {
    size = Math.floor(size * (canvas.width - 12) / widest);
    ctx.font = `bold ${size}px sans-serif`;
  }
  ctx.lineWidth = Math.max(2, size / 6);
  ctx.strokeStyle = "#000000";
  ctx.strokeText(text, 6, size + 4);
  ctx.fillStyle = colour;
  ctx.fillText(text, 6, size + 4);
}

async function decodedImage(source) {
  const image = new Image();
  image.src = source;
  await image.decode();
  return image;
}

// A plain grey image of [width, height] pixels: the stand-in for an image the browser cannot decode.
function greyImage([width, height]) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#808080";
  ctx.fillRect(0, 0, width, height);
  return decodedImage(canvas.toDataURL());
}
