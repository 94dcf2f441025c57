"""Render a predicted segmentation in 3D with Slicer's own segmentation core (slicer-core) and VTK.

Used for the README picture: the surfaces are made by Slicer's closed-surface converter from the
``.seg.nrrd`` the engine wrote, exactly as Slicer shows them, and drawn off-screen.

    python Resources/Screenshots/render_segmentation.py PREDICTION.seg.nrrd OUT.png [TITLE]
"""

from __future__ import annotations

import sys

import slicer
import vtk


def render(seg_path: str, png_path: str, title: str = "", size: tuple[int, int] = (640, 480)) -> None:
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = logic.LoadSegmentationFromFile(seg_path, False)
    if node is None:
        raise SystemExit(f"{seg_path}: cannot be read as a segmentation")
    node.CreateClosedSurfaceRepresentation()
    segmentation = node.GetSegmentation()
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.1, 0.1, 0.14)
    renderer.SetBackground2(0.35, 0.35, 0.45)
    renderer.GradientBackgroundOn()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        surface = vtk.vtkPolyData()
        node.GetClosedSurfaceRepresentation(segment_id, surface)
        if surface.GetNumberOfPoints() == 0:
            continue
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(surface)
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(segmentation.GetNthSegment(index).GetColor())
        actor.GetProperty().SetOpacity(0.55 if index == 1 else 1.0)  # see the cavity through the wall
        renderer.AddActor(actor)
    if title:
        text = vtk.vtkTextActor()
        text.SetInput(title)
        text.GetTextProperty().SetFontSize(16)
        text.SetPosition(10, 10)
        renderer.AddViewProp(text)
    camera = renderer.GetActiveCamera()
    camera.Elevation(-60)
    camera.Azimuth(30)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(png_path)
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


if __name__ == "__main__":
    render(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
